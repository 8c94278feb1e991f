"""What every kind of test needs: where the shared data lies, a free loopback port, waiting for a condition."""
from __future__ import annotations

import socket
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"  # beside the checkout: datasets and recorded requests
DATASETS = SHARED / "datasets"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 120.0, every: float = 0.2) -> None:
    """Poll until `predicate()` is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)
