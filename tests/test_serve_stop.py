"""`clickmask serve` stopped the way a service manager stops it (SIGTERM), while an annotator clicks: every click
answered is written, Ray and all its processes stop, the exit code is 0, and nothing is dumped. Its port is the
ingress replica's own (direct ingress, no HTTP proxy in between). The command runs as
users run it, in a process of its own with a Ray of its own (so the test is in the `ray` tier by hand)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select

from finetune_support import disk_images, predict_body, tiny_checkpoint
from image_server import ImageServer
from orchestrator.db import Click
from support import free_port, listening_process, wait_for

pytestmark = pytest.mark.ray


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the running processes that contain `text` (Ray's processes name their temp folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line[:160])
    return found


class Annotator(threading.Thread):
    """Clicks without pause until the backend stops answering; counts the clicks answered with a mask."""

    def __init__(self, url: str, body: dict):
        super().__init__(daemon=True)
        self.url, self.body, self.answered = url, body, 0

    def run(self) -> None:
        while True:
            try:
                reply = requests.post(self.url, json=self.body, timeout=30)
            except requests.RequestException:
                return
            if reply.status_code != 200 or not reply.json().get("results"):
                return
            self.answered += 1


def test_sigterm_while_clicking_writes_every_answered_click_stops_ray_and_exits_0(tmp_path, ls_request):
    images = tmp_path / "images"
    images.mkdir()
    (name, _), = disk_images(images, 1)
    server = ImageServer(images)
    # The command's temp folder, short (Ray's socket paths must stay under 108 bytes): Ray's processes carry it in
    # their command lines.
    run_dir = Path(tempfile.mkdtemp(prefix="cm-stop-"))
    port = free_port()
    env = {**os.environ, "CLICKMASK_DATA_DIR": str(tmp_path / "data"), "CLICKMASK_ALLOWED_IMAGE_HOSTS": server.host,
           "CLICKMASK_FINETUNE_EVERY_ANNOTATIONS": "0", "CLICKMASK_FINETUNE_EVERY_MINUTES": "0",
           "TMPDIR": str(run_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port),
               "--model", str(tiny_checkpoint(tmp_path / "tiny.pt"))]
    with open(tmp_path / "stderr.log", "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "stderr.log").read_text()[-2000:]
            try:
                return requests.get(url + "/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, "clickmask serve to answer", timeout=300, every=1.0)
        # The ingress itself listens on the port (Ray Serve's direct ingress): no HTTP proxy between.
        assert "ServeReplica:clickmask:Backend" in listening_process(port), listening_process(port)
        annotator = Annotator(url + "/predict", predict_body(
            ls_request("predict_interactive_positive_keypoint"), server.url(name), (128, 96), [(31.0, 42.0, True)],
            project=77))
        annotator.start()
        wait_for(lambda: annotator.answered >= 10, "ten answered clicks", timeout=120)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=180) == 0
        annotator.join(60)
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    log = (tmp_path / "stderr.log").read_text()
    assert "SIGTERM received" not in log and "Traceback" not in log and "stopped" in log, log[-3000:]
    assert processes_mentioning(str(run_dir)) == []
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'clickmask.db'}")
    try:
        with engine.connect() as connection:
            written = connection.scalar(select(func.count()).select_from(Click))
    finally:
        engine.dispose()
    assert written >= annotator.answered >= 10  # a click answered as the stop began may be written but not read
