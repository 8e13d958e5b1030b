"""Django sender for bench/django-path: group_send as fast as channels_redis allows.

    python send_many.py FIRST_USER USERS ROUNDS SIZE

Sends ROUNDS rounds; each round sends one message to every group user.FIRST_USER ..
user.(FIRST_USER + USERS - 1), in that order, through the project's channel layer
(benchsite.settings, BENCH_REDIS_URL). Each text starts with `HB<unix ns>:` (the send
time, which herald-bench turns into latency) padded with `x` to SIZE bytes. Prints one
JSON line: {"sent": n, "secs": elapsed}.
"""
import asyncio
import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")


async def main(first, users, rounds, size):
    import django

    django.setup()
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    sent = 0
    started = time.monotonic()
    for _ in range(rounds):
        for user in range(first, first + users):
            stamp = f"HB{time.time_ns()}:"
            text = stamp + "x" * max(0, size - len(stamp))
            await layer.group_send(f"user.{user}", {"type": "notify", "text": text})
            sent += 1
    print(json.dumps({"sent": sent, "secs": time.monotonic() - started}), flush=True)


if __name__ == "__main__":
    first, users, rounds, size = (int(a) for a in sys.argv[1:5])
    asyncio.run(main(first, users, rounds, size))
