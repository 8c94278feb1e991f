"""Headless Chromium for browser tests: Debian's `chromium` package driven by Playwright for Python. Playwright's
own browser download is never used (`playwright install` is not needed): the system browser is launched by path,
with a fresh profile per test, and told not to reach out to the network on its own."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """CLICKMASK_CHROMIUM, else the Debian package's launcher; an error naming the fix when it is missing."""
    path = os.environ.get("CLICKMASK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise RuntimeError(f"no Chromium at {path}: install Debian's package (apt-get install -y chromium "
                           "chromium-driver) or set CLICKMASK_CHROMIUM")
    return path


def launch(playwright, profile: Path, **context):
    """A persistent context (a fresh profile folder) on the system Chromium; `context`: Playwright's options."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True, **context)


def artifacts_dir(tmp_path_factory, name: str) -> Path:
    """Where screenshots go: $CLICKMASK_TEST_ARTIFACTS/<name> when set (CI keeps it), else pytest's tmp dir."""
    root = os.environ.get("CLICKMASK_TEST_ARTIFACTS")
    folder = Path(root) / name if root else tmp_path_factory.mktemp(name)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {folder}")
    return folder


def decode_png(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a PNG")
    return image.astype(np.int16)


def changed(before: np.ndarray, after: np.ndarray, threshold: int = 30) -> np.ndarray:
    """Screen pixels whose colour moved by more than `threshold` (sum over the channels)."""
    return np.abs(after - before).sum(axis=2) > threshold
