"""The HTTP face of the backend: the Label Studio ML backend protocol, as a Ray Serve ingress deployment.

Flow of an interactive request: parse and validate the body (integrations.label_studio.protocol), then for each
object ask a model replica (workers.serving.ClickModel) for a mask, sending the decoded image along when this
ingress had not held it (so the replica likely lacks it too) or when the replica answers that it lacks it; encode
each mask once for each reader (brush RLE or polygons for Label Studio, as the label config asks; COCO RLE for the
database) and hand each answered click to the recorder, which writes it off the request path. Blocking work (image
fetching, large bodies, encoding, database) runs in threads, never on the event loop. A batch request for a single
task (Label Studio asking for its predictions as an annotator opens it) is answered at once with an empty prediction
and warms the task's image: fetched and handed to the replica its clicks will go to, before the first click.

Each project serves its own model version: the ingress looks it up in the registry (orchestrator.registry), keeps
the answer for `registry_ttl_s`, and names it in every request to the replicas, which answer with it (or, while it
loads, with the project's previous one) and say which answered. So a promotion or rollback reaches serving within
about that time, without a redeploy.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, UTC

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from sqlalchemy.exc import InterfaceError, OperationalError

from integrations.images import ImageFetcher, ImageFetchError, ImageSettings
from integrations.label_studio import protocol
from integrations.label_studio.errors import ProtocolError
from integrations.label_studio.labeling_config import POLYGONS
from integrations.masks import CocoRle, encode
from integrations.polygons import PolygonOptions, draw
from workers.model.errors import InvalidInputError
from workers.serving import SegmentRequest, SegmentResult, rss_bytes

from .metrics import ServingMetrics

log = logging.getLogger(__name__)
# A body larger than this is parsed in a thread. Label Studio's body grows with the regions on the image (0.5 MB
# with 20 brush masks, parsed in about 0.4 ms); a small one parses in tens of microseconds, less than a thread hop.
PARSE_ON_LOOP_BYTES = 64 * 1024
# Label Studio asks for a task's predictions when an annotator opens it (a batch /predict of that one task): its
# image is then fetched and handed to a model replica in the background, so the first click costs the model alone.
# A larger batch (a Data Manager page, "Retrieve predictions") is not warmed: that is many images nobody clicks yet.
WARM_TASKS = 1
WARMING_AT_ONCE = 4  # background warms in flight; beyond that a task opens without one
app = FastAPI(title="clickmask", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass(frozen=True)
class IngressOptions:
    """What the ingress needs to know, passed explicitly (Ray workers on a cluster do not share our environment)."""

    images: ImageSettings
    database_url: str | None = field(default=None, repr=False)  # may carry a password
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    max_body_bytes: int = protocol.MAX_BODY_BYTES
    registry_ttl_s: float = 2.0  # how long a project's serving version is taken as known
    recorder_queue_size: int = 10_000  # clicks waiting to be written before new ones are dropped
    polygons: PolygonOptions = field(default_factory=PolygonOptions)  # how masks become polygon answers


def image_key(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def ingress_name() -> str:
    """This ingress replica's id in Ray Serve (its `ingress` label on /metrics when there are several)."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return str(os.getpid())


def project_id(project: str) -> int | None:
    """Label Studio sends "<id>.<created unix time>"; an id the database cannot hold (64 bits) is no project."""
    head = project.split(".", 1)[0]
    return int(head) if head.isascii() and head.isdigit() and int(head) < 2**63 else None


def database_unavailable(action, exc: Exception) -> JSONResponse:
    """A webhook that could not be stored because the database is down: 503, so the sender knows to send again.
    The driver's message (host, port, reason) is logged, not returned. (Defined before the class: serve.ingress
    pickles the routes when the class is defined, with the module's names as they are then.)"""
    from orchestrator.recorder import first_line

    log.error("webhook %s not stored, database unavailable: %s", str(action)[:64], first_line(exc))
    return JSONResponse(protocol.error_response("database unavailable: the event was not stored, send it again"),
                        status_code=503, headers={"Retry-After": "10"})


@serve.deployment(name="Backend", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
@serve.ingress(app)
class Backend:
    def __init__(self, model: DeploymentHandle, options: IngressOptions, model_version: str = "base",
                 metrics_board: DeploymentHandle | None = None):
        # Calls to the model replicas go over Serve's gRPC transport, not Ray's actor calls: about 3 ms less per
        # click here (orchestrator/serving/README.md, "The click path").
        self.model = model.options(_by_reference=False)
        self.options = options
        self.model_version = model_version
        self.fetcher = ImageFetcher(options.images)
        self.recorder = None
        self.session_factory = None
        self._serving: dict = {}  # ls project id -> (monotonic expiry, registry.Serving)
        self._warming: set[asyncio.Task] = set()  # referenced until done: the loop keeps only weak references
        if options.database_url:
            from orchestrator.db.engine import make_engine, make_session_factory
            from orchestrator.recorder import Recorder

            self.session_factory = make_session_factory(make_engine(options.database_url))
            self.recorder = Recorder(self.session_factory, queue_size=options.recorder_queue_size).start()
        self.metrics = ServingMetrics(self.fetcher, self.recorder, self.session_factory, metrics_board,
                                      ingress_name())

    def __del__(self):
        if self.recorder is not None:
            self.recorder.stop()

    def stats(self) -> dict:
        """Memory and queues of this ingress (to watch them stay within their bounds under load), and the time of
        its latest answered /predict requests (seconds, the model's seconds of them, body bytes), for benchmarks."""
        cache = self.fetcher.cache
        recorder = self.recorder.status().__dict__ if self.recorder is not None else None
        return {"pid": os.getpid(), "rss_bytes": rss_bytes(), "image_cache_images": len(cache),
                "image_cache_bytes": cache.bytes, "image_cache_max_bytes": cache.max_bytes, "recorder": recorder,
                "recent_predict_s": list(self.metrics.recent)}

    # ------------------------------------------------------------------------------------------------ plumbing

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if self.options.basic_auth is None:
            return None
        user, password = self.options.basic_auth
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        # Spaces and tabs around a field value are optional whitespace in HTTP (RFC 9110 5.5), not part of it.
        given = request.headers.get("authorization", "").strip(" \t")
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return JSONResponse({"errors": ["authentication required"]}, status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="clickmask"'})

    async def _serving_for(self, project: str | None):
        """The project's serving version (name, checkpoint key), from the registry through a short cache. The
        registry being away never fails a request: the last known answer (or the base) is used."""
        from orchestrator.registry import Serving, serving

        pid = project_id(project) if project else None
        base = Serving(self.model_version, None)
        if pid is None or self.session_factory is None:
            return base
        expiry, known = self._serving.get(pid, (0.0, None))
        if time.monotonic() < expiry:
            return known
        try:
            known = await asyncio.to_thread(self._lookup, serving, pid)
        except Exception as exc:
            log.warning("registry lookup for project %s failed: %s", pid, exc)
            known = known or base
        self._serving[pid] = (time.monotonic() + self.options.registry_ttl_s, known)
        return known

    def _lookup(self, serving, pid: int):
        with self.session_factory() as session:
            return serving(session, pid, self.model_version)

    async def _body(self, request: Request, load=protocol.load_json, spent: dict | None = None) -> dict:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.options.max_body_bytes:
                raise ProtocolError(f"request body larger than {self.options.max_body_bytes} bytes")
        if spent is not None:
            spent["body_bytes"] = len(raw)
        if len(raw) > PARSE_ON_LOOP_BYTES:  # milliseconds of parsing: other clicks are not kept waiting meanwhile
            return await asyncio.to_thread(load, bytes(raw), self.options.max_body_bytes)
        return load(bytes(raw), self.options.max_body_bytes)

    # ---------------------------------------------------------------------------------------------- endpoints

    @app.get("/health")
    async def health(self) -> dict:
        return protocol.health_response()

    @app.post("/setup")
    async def setup(self, request: Request):
        if denied := self._unauthorized(request):
            return denied
        try:
            parsed = protocol.parse_setup(await self._body(request))
        except ProtocolError as exc:
            return JSONResponse(protocol.error_response(str(exc)), status_code=400)
        return protocol.setup_response((await self._serving_for(parsed.project)).name)

    @app.get("/versions")
    async def versions(self, request: Request):
        if denied := self._unauthorized(request):
            return denied
        names = [self.model_version]
        if self.session_factory is not None:
            from orchestrator.registry import version_names

            try:
                names = await asyncio.to_thread(self._names, version_names)
            except Exception as exc:
                log.warning("registry listing failed: %s", exc)
        return protocol.versions_response(names)

    def _names(self, version_names) -> list[str]:
        with self.session_factory() as session:
            return version_names(session, self.model_version)

    @app.post("/predict")
    async def predict(self, request: Request):
        t0 = time.perf_counter()
        spent = {"model_s": 0.0, "body_bytes": 0}  # filled as the request goes: the model replicas' own time
        try:
            return await self._predict(request, spent)
        finally:
            self.metrics.predicted(time.perf_counter() - t0, spent["model_s"], spent["body_bytes"])

    async def _predict(self, request: Request, spent: dict):
        errors = self.metrics.errors
        if denied := self._unauthorized(request):
            errors.labels("predict", "unauthorized").inc()
            return denied
        try:
            parsed = protocol.parse_predict(await self._body(request, protocol.load_predict_json, spent))
        except ProtocolError as exc:
            errors.labels("predict", "bad request").inc()
            return JSONResponse(protocol.error_response(str(exc)), status_code=400)
        serving = await self._serving_for(parsed.project)
        if not parsed.interactive:
            # Nothing to segment without clicks: an empty prediction per task keeps Label Studio's batch flow going.
            if len(parsed.tasks) <= WARM_TASKS:
                for task in parsed.tasks:
                    self._warm(task.image_uri)
            return protocol.predict_response([protocol.prediction([], 0.0, serving.name) for _ in parsed.tasks])
        try:
            return await self._interactive(parsed, serving, spent)
        except (ProtocolError, ImageFetchError, InvalidInputError) as exc:
            errors.labels("predict", type(exc).__name__).inc()
            return protocol.interactive_error_response(serving.name, str(exc))
        except Exception:
            errors.labels("predict", "internal").inc()
            log.exception("interactive prediction failed")
            return JSONResponse(protocol.error_response("internal error while predicting"), status_code=500)

    async def _interactive(self, parsed: protocol.PredictRequest, serving, spent: dict) -> Response:
        task = parsed.tasks[0]
        key = image_key(task.image_uri)
        pid = project_id(parsed.project)
        record = self.recorder is not None and pid is not None
        results, scores = [], []
        answered = serving.name
        cap = self.options.images.max_image_pixels
        for obj in parsed.objects:
            # The answer is a mask at the size Label Studio reports: that size is capped like the image itself.
            if obj.width * obj.height > cap:
                raise ProtocolError(f"the image size in the request, {obj.width}x{obj.height}, is over the cap of "
                                    f"{cap} pixels")
        t0 = time.perf_counter()  # a click's time includes fetching its image
        # An image this ingress has not held is most likely new to the replicas too: sent with the first request,
        # it spares a round trip to a replica that would only answer that it lacks it.
        image = None
        if not self.fetcher.holds(task.image_uri):
            image = await asyncio.to_thread(self.fetcher.fetch, task.image_uri)
        for obj in parsed.objects:
            clicks = list(obj.prompt_clicks())
            handle = self.model.options(multiplexed_model_id=key)
            request = SegmentRequest(key, obj.key, clicks, box=obj.box, size=(obj.width, obj.height),
                                     model_version=serving.name, checkpoint_key=serving.checkpoint_key, project=pid)
            answer: SegmentResult | None = await self._segment(handle, request, image)
            if answer is None:  # that replica does not hold the image yet
                image = await asyncio.to_thread(self.fetcher.fetch, task.image_uri)
                answer = await self._segment(handle, request, image)
            self.metrics.replica_images.labels("hit" if image is None else "miss").inc()
            image = None  # that replica holds it now
            answered = answer.model_version
            total_ms = (time.perf_counter() - t0) * 1000
            self.metrics.answered(answer.replica, pid, answer.model_version, total_ms / 1000)
            spent["model_s"] += answer.predict_ms / 1000
            regions, stored = await asyncio.to_thread(self._encode, answer, obj, record and bool(clicks))
            results += regions
            scores.append(answer.score)
            if stored is not None:
                self._record(pid, task, obj, clicks, answer, stored, total_ms)
            t0 = time.perf_counter()
        # Encoded once, here: FastAPI's JSONResponse would walk the brush RLE (thousands of ints) first.
        return Response(protocol.dump_json(protocol.predict_response(
            [protocol.prediction(results, float(np.mean(scores)) if scores else 0.0, answered)])),
            media_type="application/json")

    def _warm(self, uri: str) -> None:
        """Fetch an image and hand it to the model replica its clicks will be routed to, in the background."""
        if len(self._warming) >= WARMING_AT_ONCE or self.fetcher.holds(uri):
            return
        warming = asyncio.create_task(self._warm_image(uri))
        self._warming.add(warming)
        warming.add_done_callback(self._warming.discard)

    async def _warm_image(self, uri: str) -> None:
        try:
            image = await asyncio.to_thread(self.fetcher.fetch, uri)
            key = image_key(uri)
            await self.model.options(multiplexed_model_id=key).hold.remote(image)
        except Exception as exc:  # the first click fetches it again, and answers why if it fails again
            log.info("could not warm an opened task's image: %s", exc)

    def _encode(self, answer: SegmentResult, obj, record: bool) -> tuple[list[dict], CocoRle | None]:
        """The answer's regions for Label Studio and, when the click is recorded, the mask they show the annotator
        as stored (COCO RLE): each encoding made once, off the event loop. The mask is answered at the size Label
        Studio knows the image by; for polygons, what is shown is the polygons drawn back."""
        mask = answer.mask()
        if mask.shape != (obj.height, obj.width):
            mask = cv2.resize(mask.view(np.uint8), (obj.width, obj.height), interpolation=cv2.INTER_NEAREST) > 0
        if obj.answer.region_type == POLYGONS:
            regions, polygons = protocol.polygon_results(mask, obj.answer, self.options.polygons, answer.score)
            mask = draw(polygons, mask.shape[1], mask.shape[0])
        else:
            regions = [protocol.brush_result(mask, obj.answer, answer.score)]
        return regions, (encode(mask) if record else None)

    @staticmethod
    async def _segment(handle, request: SegmentRequest, image: np.ndarray | None = None) -> SegmentResult | None:
        """One replica call. A replica that dies under it (killed, or its node gone) is no longer routed to and
        Ray Serve starts another; the request carries the object's whole click history, so it is asked once more
        (the next replica may answer None, and is then sent the image)."""
        try:
            return await handle.segment.remote(request, image)
        except RayActorError as exc:
            log.warning("a model replica was lost during a request (%s); asking again", type(exc).__name__)
            return await handle.segment.remote(request, image)

    def _record(self, pid: int, task, obj, clicks, answer: SegmentResult, mask: CocoRle, total_ms: float):
        from orchestrator.recorder import ClickRecord

        last = clicks[-1]
        self.recorder.record(ClickRecord(
            project=pid, image_uri=task.image_uri, image_width=obj.width, image_height=obj.height,
            session_key=obj.key, seq=len(clicks), x=float(last.x), y=float(last.y), positive=last.positive,
            clicked_at=datetime.now(UTC), mask=mask, score=answer.score, latency_ms=total_ms,
            model_version=answer.model_version, label=obj.label,
        ))

    @app.post("/webhook")
    async def webhook(self, request: Request):
        if denied := self._unauthorized(request):
            return denied
        try:
            body = await self._body(request)
        except ProtocolError as exc:
            return JSONResponse(protocol.error_response(str(exc)), status_code=400)
        if self.session_factory is None:
            return {"status": "ignored", "reason": "no database configured"}
        if isinstance(body, dict) and body.get("action") == "START_TRAINING":
            # Label Studio waits 1 s for a webhook: queue the job (or join the queued one) and answer; the
            # scheduler of `clickmask serve` runs it.
            from orchestrator.jobs import request_from_webhook

            try:
                job = await asyncio.to_thread(request_from_webhook, self.session_factory, body)
            except (OperationalError, InterfaceError) as exc:
                return database_unavailable("START_TRAINING", exc)
            if job is None:
                return JSONResponse(protocol.error_response("START_TRAINING names no project"), status_code=400)
            return {"status": "queued", "job": job}
        from orchestrator.events import handle_event

        try:
            outcome = await asyncio.to_thread(handle_event, self.session_factory, body)
        except (OperationalError, InterfaceError) as exc:
            return database_unavailable(body.get("action") if isinstance(body, dict) else None, exc)
        return {"status": outcome.status, "reason": outcome.reason}

    # ------------------------------------------------------------------------------------ metrics and dashboard

    @app.get("/metrics")
    async def prometheus(self, request: Request):
        if denied := self._unauthorized(request):
            return denied
        from .metrics import CONTENT_TYPE

        # Reading job states queries the database: off the event loop.
        return Response(await asyncio.to_thread(self.metrics.text), media_type=CONTENT_TYPE)

    @app.get("/dashboard")
    async def dashboard(self, request: Request, project: str | None = None):
        if denied := self._unauthorized(request):
            return denied
        from orchestrator.dashboard.page import CSP, plain_page

        if self.session_factory is None:
            return HTMLResponse(plain_page("No database is configured: there is nothing to show."), 503)
        if project is not None and not (project.isascii() and project.isdigit() and len(project) <= 18):
            return HTMLResponse(plain_page("project must be a Label Studio project id (a number)."), 400)
        try:
            status, page = await asyncio.to_thread(self._dashboard_page, None if project is None else int(project))
        except (OperationalError, InterfaceError) as exc:
            log.error("dashboard: database unavailable: %s", exc.__class__.__name__)
            return HTMLResponse(plain_page("The database is unavailable; try again later."), 503)
        # No script, no external resource: a strict policy costs nothing and keeps injected markup inert.
        return HTMLResponse(page, status, headers={"Content-Security-Policy": CSP})

    def _dashboard_page(self, ls_project: int | None) -> tuple[int, str]:
        from orchestrator.dashboard.figures import compute, projects
        from orchestrator.dashboard.page import render_index, render_project

        with self.session_factory() as session:
            if ls_project is None:
                return 200, render_index(projects(session))
            figures = compute(session, ls_project)
        return (200 if figures.found else 404), render_project(figures).html
