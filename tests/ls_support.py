"""A real Label Studio for end-to-end tests: installed once into its own virtual environment (it pins its own
numpy, opencv and Django, so never into the project's), started on a free loopback port with a throwaway data
directory, and driven through its HTTP API the way its UI drives it.

The install lives outside the checkout, in $CLICKMASK_LS_CACHE or ~/.cache/clickmask/label-studio-<version>-<lock hash>,
and is reused when its marker file exists (written only after a successful install). It takes the exact versions of
label-studio.lock beside this file, so a change to the lock is a new install; `bash tests/run --refresh-pins` sets
CLICKMASK_LS_UNLOCKED=1 to resolve the newest versions that label-studio.in allows instead. What it relies on was
measured on Label Studio 1.23.2: the environment variables below, the token exchange (integrations/label_studio/
auth.py) and the interactive-annotating requests (the recorded bodies the tests replay).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from support import SHARED, free_port

INSTALL_TIMEOUT = 900
START_TIMEOUT = 420  # first start runs the migrations: about 35 s idle, 2 min seen on a busy 2-core machine

REQUIREMENTS = Path(__file__).with_name("label-studio.in")
LOCK = Path(__file__).with_name("label-studio.lock")
LS_VERSION = re.search(r"^label-studio==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE).group(1)


def _unlocked() -> bool:
    return os.environ.get("CLICKMASK_LS_UNLOCKED", "") not in ("", "0")


def pip_arguments() -> list[str]:
    """What pip installs: label-studio.in, held to label-studio.lock unless the pins are being refreshed."""
    return ["-r", str(REQUIREMENTS)] + ([] if _unlocked() else ["-c", str(LOCK)])


def install_dir() -> Path:
    root = Path(os.environ.get("CLICKMASK_LS_CACHE") or Path.home() / ".cache" / "clickmask")
    pins = REQUIREMENTS.read_bytes() + (b"unlocked" if _unlocked() else LOCK.read_bytes())
    return root / f"label-studio-{LS_VERSION}-{hashlib.sha256(pins).hexdigest()[:10]}"


@contextmanager
def _file_lock(path: Path):
    """Two test runs on one machine must not install into the same folder at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed() -> Path:
    """The `label-studio` executable of the cached install, installing it first when the marker is missing."""
    venv = install_dir()
    marker = venv / ".installed"
    executable = venv / "bin" / "label-studio"
    with _file_lock(venv.parent / f"{venv.name}.lock"):
        if marker.is_file() and executable.is_file():
            return executable
        shutil.rmtree(venv, ignore_errors=True)  # a partial install from an interrupted run
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        log = venv.parent / f"{venv.name}.install.log"
        with open(log, "w") as out:
            result = subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", *pip_arguments()],
                stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT,
            )
        if result.returncode != 0 or not executable.is_file():
            raise RuntimeError(f"installing label-studio=={LS_VERSION} failed; see {log}:\n{_tail(log)}")
        marker.write_text(f"label-studio=={LS_VERSION} ({' '.join(pip_arguments())}) installed in "
                          f"{time.monotonic() - started:.0f} s\n")
        return executable


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, the user created from the environment, and a personal access token."""

    url: str
    username: str
    password: str
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    pat: str = ""
    startup_s: float = 0.0  # from process start to GET /health = 200
    session: requests.Session = field(default_factory=requests.Session)
    _access: str = ""
    _access_time: float = 0.0

    # -- lifecycle

    @classmethod
    def start(cls, executable: Path, workdir: Path) -> LabelStudio:
        port = free_port()
        data_dir = workdir / "ls-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        username, password = "tester@example.com", "clickmask-test-pass"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(
            LABEL_STUDIO_USERNAME=username,
            LABEL_STUDIO_PASSWORD=password,
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
            LABEL_STUDIO_LATEST_VERSION_CHECK="false",
            # The backends under test listen on loopback: Label Studio 1.23.2 refuses such URLs unless both are off.
            LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",
            LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
            PYTHONUNBUFFERED="1",
        )
        log_path = workdir / "label-studio.log"
        log = open(log_path, "w")
        process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True,
        )
        log.close()
        studio = cls(f"http://127.0.0.1:{port}", username, password, process, data_dir, log_path)
        try:
            studio.startup_s = studio.wait_healthy()
            studio.pat = studio.create_pat()
        except BaseException:
            studio.stop()
            raise
        return studio

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}:\n{_tail(self.log_path)}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Label Studio not healthy after {timeout} s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop the server and the processes it started (its own session), politely first."""
        if self.process.poll() is None:
            import signal

            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    # -- credentials

    def create_pat(self) -> str:
        """Log in with a browser-like session and create a personal access token (POST /api/token/)."""
        browser = requests.Session()
        browser.get(f"{self.url}/user/login/", timeout=30).raise_for_status()
        csrf = browser.cookies["csrftoken"]
        response = browser.post(
            f"{self.url}/user/login/",
            data={"email": self.username, "password": self.password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{self.url}/user/login/"}, timeout=30,
        )
        response.raise_for_status()
        response = browser.post(f"{self.url}/api/token/", headers={"X-CSRFToken": browser.cookies["csrftoken"],
                                                                   "Referer": f"{self.url}/"}, timeout=30)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"creating a personal access token: HTTP {response.status_code} {response.text[:300]}")
        return response.json()["token"]

    def _bearer(self) -> dict[str, str]:
        # Access tokens last 5 minutes: exchange the PAT again well before that.
        if not self._access or time.monotonic() - self._access_time > 120:
            response = self.session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.pat}, timeout=30)
            response.raise_for_status()
            self._access, self._access_time = response.json()["access"], time.monotonic()
        return {"Authorization": f"Bearer {self._access}"}

    def api(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kwargs):
        response = self.session.request(method, f"{self.url}{path}", headers=self._bearer(), timeout=120, **kwargs)
        if response.status_code not in expect:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    # -- projects, tasks, backends

    def create_project(self, label_config: str, title: str = "clickmask e2e") -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"]

    def upload_images(self, project_id: int, paths: list[Path]) -> list[dict]:
        """Upload image files as tasks (they become /data/upload/... URLs); returns the project's tasks."""
        files = [("file", (p.name, p.read_bytes())) for p in paths]
        self.api("POST", f"/api/projects/{project_id}/import", files=files)
        return self.tasks(project_id)

    def tasks(self, project_id: int) -> list[dict]:
        answer = self.api("GET", f"/api/tasks?project={project_id}&page_size=1000")
        return answer["tasks"] if isinstance(answer, dict) else answer

    def connect_backend(self, project_id: int, url: str, title: str = "clickmask",
                        basic_auth: tuple[str, str] | None = None) -> int:
        """Add an ML backend with interactive preannotations on, as the project settings page does."""
        body = {"url": url, "project": project_id, "title": title, "is_interactive": True}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        return self.api("POST", "/api/ml", json=body)["id"]

    def set_webhook_auth(self, project_id: int, backend_url: str, basic_auth: tuple[str, str]) -> int:
        """Label Studio creates a project webhook at <backend>/webhook when a backend is added, but sends it without
        auth: give it the backend's Basic auth header. Returns the webhook id."""
        import base64

        target = backend_url.rstrip("/") + "/webhook"
        hooks = [h for h in self.api("GET", f"/api/webhooks?project={project_id}") if h["url"] == target]
        if not hooks:
            raise RuntimeError(f"no webhook to {target} in project {project_id}")
        token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
        self.api("PATCH", f"/api/webhooks/{hooks[0]['id']}", json={"headers": {"Authorization": f"Basic {token}"}})
        return hooks[0]["id"]

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        """Submit an annotation as an annotator would (Label Studio then sends ANNOTATION_CREATED)."""
        return self.api("POST", f"/api/tasks/{task_id}/annotations", json={"result": result})["id"]

    def interactive_annotating(self, backend_id: int, task_id: int, regions: list[dict]) -> dict:
        """What the labeling UI sends when a smart region is placed: the task and the smart regions as context.
        Label Studio answers {"data": <the backend's results[0]>} or {"errors": [...]}, both HTTP 200."""
        return self.api("POST", f"/api/ml/{backend_id}/interactive-annotating",
                        json={"task": task_id, "context": {"result": regions}})


def smart_keypoint(x: float, y: float, width: int, height: int, label: str = "Object", positive: bool = True,
                   region_id: str | None = None, from_name: str = "kp", to_name: str = "image") -> dict:
    """A smart keypoint region as the labeling UI puts it in the context (x, y in percent of the image)."""
    import secrets

    return {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.3125, "labels": [label], "keypointlabels": [label]},
        "is_positive": positive, "id": region_id or secrets.token_urlsafe(8)[:10],
        "from_name": from_name, "to_name": to_name, "type": "keypointlabels", "origin": "manual",
    }


STANDARD_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object" background="#FF0000"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">\
<Label value="Object" smart="true" background="#000000" showInline="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">\
<Label value="Object" smart="true" background="#000000" showInline="true"/></RectangleLabels>
</View>"""


POLYGON_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object" background="#00A0FF"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">\
<Label value="Object" smart="true" background="#000000" showInline="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">\
<Label value="Object" smart="true" background="#000000" showInline="true"/></RectangleLabels>
</View>"""


def eval_images(count: int = 1, dataset: str = "grabcut33") -> list[Path]:
    """The first `count` images of an eval set in shared/datasets (read in place, never copied into the repo)."""
    folder = SHARED / "datasets" / "eval" / dataset / "images"
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(images) < count:
        raise RuntimeError(f"fewer than {count} images in {folder}")
    return images[:count]
