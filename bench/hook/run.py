#!/usr/bin/env python3
"""Connect hook figures: the round trip of a real Django connect view, and WebSocket
connects per second through herald with the decision cache cold and warm.

    .venv/bin/pip install ./python
    cargo build --release -p herald          # or set HERALD_BIN (debug works, slower)
    .venv/bin/python bench/hook/run.py [--sessions 500] [--concurrency 32]

Django runs with `manage.py runserver --noreload` (threaded, SQLite sessions): the
figures are those of Django's development server on this machine, printed with the
machine's core count. Nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline: float = 20) -> None:
    until = time.monotonic() + deadline
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > until:
                raise SystemExit(f"{url} did not answer within {deadline}s")
            time.sleep(0.1)


def setup_django(tmp: Path, sessions: int) -> tuple[dict[str, str], list[tuple[int, str]]]:
    (tmp / "bench_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', 'NAME': {str(tmp / 'db.sqlite3')!r}}}}}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT / 'python'}",
        "DJANGO_SETTINGS_MODULE": "bench_settings",
    }
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], env=env, check=True)
    script = f"""
import django, json
django.setup()
from django.contrib.auth.models import User
from django.test import Client
out = []
for i in range({sessions}):
    user = User.objects.create_user(f"user{{i}}")
    client = Client()
    client.force_login(user)
    out.append((user.pk, client.cookies["sessionid"].value))
print(json.dumps(out))
"""
    made = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
    )
    return env, [tuple(x) for x in json.loads(made.stdout)]


def hook_round_trips(url: str, users: list[tuple[int, str]], n: int) -> list[float]:
    times = []
    for i in range(n):
        pk, session = users[i % len(users)]
        body = json.dumps(
            {"path": f"/message/{pk}/stream/", "route": "/message/{user_id}/stream/",
             "params": {"user_id": str(pk)}, "groups": [f"user.{pk}"], "transport": "websocket",
             "headers": {"cookie": f"sessionid={session}"}, "client_ip": "127.0.0.1", "origin": None}
        ).encode()
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Cookie": f"sessionid={session}"},
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            assert response.status == 200
        times.append(time.perf_counter() - start)
    return times


async def connect_once(addr: tuple[str, int], pk: int, session: str) -> None:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(
        (f"GET /message/{pk}/stream/ HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         f"Sec-WebSocket-Version: 13\r\nCookie: sessionid={session}\r\n\r\n").encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:40])
    # A refused connection gets a close frame at once; an admitted one stays silent.
    try:
        frame = await asyncio.wait_for(reader.read(2), 0.001)
        if frame:
            raise RuntimeError(f"closed right after the upgrade: {frame!r}")
    except asyncio.TimeoutError:
        pass
    writer.close()


async def connects_per_second(addr, users, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(pk, session):
        async with gate:
            await connect_once(addr, pk, session)

    start = time.perf_counter()
    await asyncio.gather(*(one(pk, s) for pk, s in users))
    return len(users) / (time.perf_counter() - start)


def metric(url: str, name: str) -> int:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
    return int(match.group(1)) if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--round-trips", type=int, default=1000)
    args = parser.parse_args()
    release = ROOT / "target" / "release" / "herald"
    herald_bin = os.environ.get("HERALD_BIN") or str(
        release if release.exists() else ROOT / "target" / "debug" / "herald"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env, users = setup_django(tmp, args.sessions)
        django_port = free_port()
        django = subprocess.Popen(
            [sys.executable, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{django_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        herald = None
        try:
            hook_url = f"http://127.0.0.1:{django_port}/herald/connect/"
            wait_http(hook_url)
            times = sorted(hook_round_trips(hook_url, users, args.round_trips))
            p50 = statistics.median(times) * 1000
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
            (tmp / "herald.toml").write_text(
                f'[[routes]]\npath = "/message/{{user_id}}/stream/"\ngroups = ["user.{{user_id}}"]\n'
                f'auth = "hook"\n\n[hook]\nurl = "{hook_url}"\ntimeout = "5s"\ncache_ttl = "5m"\n'
            )
            herald = subprocess.Popen(
                [herald_bin, "serve", "--config", str(tmp / "herald.toml"), "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            line = herald.stdout.readline().strip()
            addr = line.removeprefix("listening on http://")
            host, port = addr.rsplit(":", 1)
            herald_url = f"http://{addr}"
            cold = asyncio.run(connects_per_second((host, int(port)), users, args.concurrency))
            asks_cold = metric(herald_url, 'herald_hook_requests_total{result="allow"}')
            warm = asyncio.run(connects_per_second((host, int(port)), users, args.concurrency))
            asks_warm = metric(herald_url, 'herald_hook_requests_total{result="allow"}') - asks_cold
        finally:
            if herald:
                herald.kill()
            django.kill()
    print(f"machine: {os.cpu_count()} cores; herald: {herald_bin}; Django runserver (threaded), SQLite sessions")
    print(f"hook round trip (POST /herald/connect/, {args.round_trips} sequential): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"connects/s, cache cold ({args.sessions} distinct sessions, concurrency {args.concurrency}): "
          f"{cold:.0f}/s, hook calls {asks_cold}")
    print(f"connects/s, cache warm (the same {args.sessions} sessions again): "
          f"{warm:.0f}/s, hook calls {asks_warm}")


if __name__ == "__main__":
    main()
