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


def listening_process(port: int) -> str:
    """The command line of the process listening on TCP `port` (IPv4), from /proc ("" if none is found)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if fd.readlink().name.removeprefix("socket:[").removesuffix("]") in inodes:
                    return (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # a process that ended, or one we may not look into
            continue
    return ""
