"""Fixtures: the real herald binary on a free port."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]


def herald_bin() -> str:
    path = Path(os.environ.get("HERALD_BIN", REPO / "target" / "debug" / "herald"))
    if not path.is_file():
        pytest.fail(f"no herald binary at {path}: run `cargo build -p herald` or set HERALD_BIN")
    return str(path)


class Herald:
    """A `herald serve` process with a configuration file."""

    def __init__(self, config: str, tmp: Path, listen: str = "127.0.0.1:0"):
        file = tmp / "herald.toml"
        file.write_text(config)
        self.process = subprocess.Popen(
            [herald_bin(), "serve", "--config", str(file), "--listen", listen],
            stdout=subprocess.PIPE,
            stderr=None,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            text=True,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()))
        reader.start()
        reader.join(10)
        if not line or not line[0].startswith("listening on http://"):
            self.stop()
            pytest.fail(f"herald did not start: {line}")
        self.addr = line[0].strip().removeprefix("listening on http://")
        self.url = f"http://{self.addr}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def start_herald(tmp_path: Path) -> Iterator:
    started: list[Herald] = []

    def start(config: str, listen: str = "127.0.0.1:0") -> Herald:
        herald = Herald(config, tmp_path, listen)
        started.append(herald)
        return herald

    yield start
    for herald in started:
        herald.stop()
