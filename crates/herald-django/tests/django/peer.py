"""Django-side actions for the herald-django tests, one per subcommand.

  send GROUP TEXT [COUNT] [KIND] [TYPE]              group_send COUNT times; KIND:
      text (default): {"text": TEXT}     bytes: {"bytes": TEXT}     none: no body
      seq: {"text": TEXT + index}        message: {"message": TEXT} (Channels' tutorial)
      big: {"text": "x" * int(TEXT)}
  send_channel CHANNEL TEXT                           layer.send to one channel
  recv GROUP COUNT TIMEOUT                            join GROUP, print COUNT messages
  join GROUP                                          join GROUP and exit, staying a member
  ws URL COUNT TIMEOUT                                websocket client (to daphne)

Output is one JSON object per line; "ready" lines tell the test when to act.
"""
import asyncio
import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djpeer.settings")


def emit(obj):
    print(json.dumps(obj), flush=True)


def describe(message):
    out = {k: v for k, v in message.items() if k not in ("bytes",)}
    if "bytes" in message:
        out["bytes_hex"] = message["bytes"].hex()
    return out


def layer():
    import django

    django.setup()
    from channels.layers import get_channel_layer

    return get_channel_layer()


async def send(group, text, count, kind, msg_type):
    channel_layer = layer()
    for i in range(count):
        message = {"type": msg_type}
        if kind == "text":
            message["text"] = text
        elif kind == "bytes":
            message["bytes"] = text.encode()
        elif kind == "seq":
            message["text"] = f"{text}{i}"
        elif kind == "message":
            message["message"] = text
        elif kind == "big":
            message["text"] = "x" * int(text)
        await channel_layer.group_send(group, message)
    emit({"sent": count})


async def send_channel(channel, text):
    channel_layer = layer()
    await channel_layer.send(channel, {"type": "notify", "text": text})
    emit({"sent": 1})


async def recv(group, count, timeout):
    channel_layer = layer()
    channel = await channel_layer.new_channel()
    await channel_layer.group_add(group, channel)
    emit({"ready": channel})
    for _ in range(count):
        message = await asyncio.wait_for(channel_layer.receive(channel), timeout)
        emit({"message": describe(message)})
    await channel_layer.group_discard(group, channel)


async def join(group):
    channel_layer = layer()
    channel = await channel_layer.new_channel()
    await channel_layer.group_add(group, channel)
    emit({"ready": channel})


async def ws(url, count, timeout):
    import websockets

    async with websockets.connect(url) as socket:
        emit({"ready": url})
        for _ in range(count):
            frame = await asyncio.wait_for(socket.recv(), timeout)
            if isinstance(frame, bytes):
                emit({"bytes_hex": frame.hex()})
            else:
                emit({"text": frame})


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "send":
        count = int(args[2]) if len(args) > 2 else 1
        kind = args[3] if len(args) > 3 else "text"
        msg_type = args[4] if len(args) > 4 else "notify"
        asyncio.run(send(args[0], args[1], count, kind, msg_type))
    elif command == "send_channel":
        asyncio.run(send_channel(args[0], args[1]))
    elif command == "recv":
        asyncio.run(recv(args[0], int(args[1]), float(args[2])))
    elif command == "join":
        asyncio.run(join(args[0]))
    elif command == "ws":
        asyncio.run(ws(args[0], int(args[1]), float(args[2])))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
