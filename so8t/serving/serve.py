"""``so8t serve``: the production gate as an HTTP service that follows the registry alias.

**Stack.** FastAPI on uvicorn (both already installed with Prefect, whose server runs on them; well
kept, ASGI, pydantic models for the bodies) and ``prometheus_client`` (installed with Prefect too) for
``/metrics``. llama-cpp-python's own OpenAI server (``llama_cpp.server``) needs ``sse-starlette``,
``starlette-context`` and ``pydantic-settings`` and owns its model and app; it cannot swap models behind
an alias, so ``/v1/chat/completions`` calls the same ``Llama.create_chat_completion`` it calls (its
OpenAI-shaped response and the GGUF's own chat template) on the model being served.

**Endpoints.** ``POST /v1/decide`` (``{"text"}`` or ``{"texts": [...]}``), ``GET /v1/model``,
``POST /v1/chat/completions`` (also streamed, as server-sent events), ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. The ``/v1``
routes need ``Authorization: Bearer KEY`` when a key is set (``--api_key`` or ``$SO8T_API_KEY``); the
key is compared in constant time and never logged or returned.

**Following the alias** (``--model NAME --alias production``): a thread resolves the alias every
``poll_interval`` seconds (one small file read). When it names another version, that version is loaded
beside the serving one and checked (its calibration present, fitted on its GGUF's digest, the
decision prompt loaded) before one reference swap; requests already running finish on the old model,
which is closed when the last one returns, or kept loaded as a warm version (``warm_versions``, default 2:
the previous production), so a rollback to it, or a flip back, swaps without loading; a warm version is
swapped back in only if its checked files (GGUF, calibration, prompt) are unchanged on disk (inode, size,
mtime), else it is loaded and checked again. Each request also ``stat``s the registry's state file (a read
only when it changed): a request that starts after a promotion or rollback was committed waits for
that version to be swapped in, so it is never decided by the version the change replaced. A version
that fails to load or check is not swapped in:
the old one keeps serving, ``/readyz`` reports ``stale`` with the error, the metrics count the
failure, and the version is retried only when the alias moves again (or after ``retry_seconds``).

**Limits.** Bodies over ``max_body_bytes`` get 413; more than ``max_queue`` requests admitted at once
get 429 with ``Retry-After``; no model loaded yet gets 503 with ``Retry-After``; a malformed body or
field gets 422 with one line naming the field.
"""

# no "from __future__ import annotations": FastAPI reads the route functions' annotations (Request, imported
# inside create_app) as objects

import hmac
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from so8t.serving.decide import MAX_TEXT_CHARS, Decider
from so8t.errors import ConfigError, So8tError

logger = logging.getLogger(__name__)

API_KEY_ENV = "SO8T_API_KEY"


class ServeConfig(BaseModel):
    """Serve a calibrated model's ALLOW / ESCALATE / DENY decisions (and chat completions) over HTTP."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str = Field(description="A registry model name (served through --alias, followed), a reference NAME@REF "
                                   "(followed when REF is an alias), or a GGUF file (served as is).")
    alias: str | None = Field(None, description="The alias to follow for a model name (default: production).")
    registry_root: str | None = Field(None, description="Registry root (default: $SO8T_REGISTRY, else "
                                                        "~/.cache/so8t/registry).")
    calibration: str | None = Field(None, description="For a GGUF file: its calibration_results.json (default: the "
                                                      "one beside it). Registry versions bring their own.")
    decision_prompt: str | None = Field(None, description="For a GGUF file: its decision_prompt.json (default: the "
                                                          "one beside it, else the built-in prompt).")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface; set an API key).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port.")
    api_key: str | None = Field(None, description="Bearer token the /v1 routes require (default: $SO8T_API_KEY; "
                                                  "unset: no auth). Never logged.", repr=False)
    poll_interval: float = Field(0.5, gt=0, le=60, description="Seconds between two reads of the alias.")
    retry_seconds: float = Field(60.0, gt=0, description="Retry a version that failed to load after this long.")
    max_queue: int = Field(32, ge=1, description="Requests admitted at once (running + waiting); more get HTTP 429.")
    max_batch: int = Field(64, ge=1, description="Most texts in one /v1/decide request.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger gets HTTP 413.")
    max_tokens: int = Field(512, ge=1, description="Most tokens one chat completion may generate.")
    n_ctx: int = Field(2048, ge=16, description="llama.cpp context per model.")
    n_threads: int = Field(0, ge=0, description="CPU threads for llama.cpp (0: half the logical cores).")
    warm_versions: int = Field(2, ge=1, le=16, description=(
        "Versions kept loaded when following an alias: the one served and the most recently served before it "
        "(2: the previous production stays loaded, so rolling back to it swaps without loading). Each costs one "
        "model's memory; 1 closes a replaced version as soon as its last request returns."))

    @field_validator("poll_interval", "retry_seconds")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


# ----------------------------------------------------------------------------- request bodies
class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="One request to decide.")
    texts: list[str] | None = Field(None, description="Several requests, decided in order.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields llama.cpp has no use for

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


def one_line(e: ValidationError) -> str:
    """The first error of a pydantic validation as ``field: message``."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


# ----------------------------------------------------------------------------- the model being served
@dataclass
class Loaded:
    """One loaded version and the requests using it."""

    decider: Decider
    version: str | None
    since: float
    load_seconds: float
    evidence: dict[str, Any] = field(default_factory=dict)
    files: tuple[tuple[str, int, int, int], ...] = ()  # (path, inode, size, mtime_ns) of what was checked at load
    in_use: int = 0
    retired: bool = False


def file_keys(paths: list[str]) -> tuple[tuple[str, int, int, int], ...]:
    """``(path, inode, size, mtime_ns)`` of each file (a missing one as zeros): unchanged keys mean unchanged
    files (registry blobs are written once and never modified in place)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, 0, 0, 0))
    return tuple(out)


def _checked_files(decider: Decider) -> list[str]:
    c = decider.calibrated
    paths = [str(c.model.gguf), str(c.calibration.source)]
    if c.prompt_source and os.path.isfile(c.prompt_source):
        paths.append(str(c.prompt_source))
    return paths


class Metrics:
    """Prometheus metrics of one service (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("so8t_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram("so8t_request_seconds", "Request latency by route.", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.decisions = Counter("so8t_decisions", "Decisions by label.", ["decision"], registry=r)
        self.swaps = Counter("so8t_model_swaps", "Models swapped in (the first load included).", registry=r)
        self.warm_swaps = Counter("so8t_model_swaps_warm", "Swaps to a version still loaded (no load needed).",
                                  registry=r)
        self.loaded = Gauge("so8t_models_loaded", "Models loaded: the one served, warm ones, and replaced ones "
                            "still finishing requests.", registry=r)
        self.swap_failures = Counter("so8t_model_swap_failures", "Versions that failed to load or check.", registry=r)
        self.errors = Counter("so8t_errors", "Requests answered with an error, by kind.", ["kind"], registry=r)
        self.queue = Gauge("so8t_queue_depth", "Requests admitted (running or waiting).", registry=r)
        self.stale = Gauge("so8t_serving_stale", "1 when the alias names a version that could not be served.",
                           registry=r)
        self.model_info = Gauge("so8t_model_info", "The model being served (value 1).", ["version", "sha256"],
                                registry=r)


class ModelHolder:
    """The served model, its swaps, and the alias follower (see the module docstring)."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics) -> None:
        from so8t.calibrate.evaluate import parse_registry_reference

        self.cfg = cfg
        self.metrics = metrics
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: Loaded | None = None
        self.target: str | None = None  # the version the alias names
        self.error: str | None = None  # why the target is not served
        self._failed: dict[str, float] = {}
        self._warm: "OrderedDict[str, Loaded]" = OrderedDict()  # loaded, not served; least recently served first
        self._live: "weakref.WeakSet[Decider]" = weakref.WeakSet()  # every Decider this holder loaded
        self._load_lock = threading.Lock()  # one loader at a time (the follower, or a request that saw a move)
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime, size) of state.json when last resolved
        ref = parse_registry_reference(cfg.model)
        path_like = cfg.model.lower().endswith(".gguf") or os.sep in cfg.model or os.path.exists(cfg.model)
        if ref is not None:
            self.name, self.ref = ref
        elif path_like:
            self.name, self.ref = None, None
        else:
            self.name, self.ref = cfg.model, cfg.alias or "production"
        if ref is not None and cfg.alias is not None:
            raise ConfigError(f"--alias {cfg.alias}: --model {cfg.model} names its reference already: pass --model "
                              f"{self.name} --alias {cfg.alias}")
        if self.name is None and cfg.alias is not None:
            raise ConfigError(f"--alias {cfg.alias}: --model {cfg.model} is a GGUF file; an alias is followed for a "
                              "registry model name")
        from registry.models import is_version

        self.follows = self.name is not None and not is_version(self.ref) and not re.fullmatch(r"[0-9]+", self.ref)

    # ------------------------------------------------------------------------- loading
    def _registry(self):
        from registry import Registry

        return Registry(self.cfg.registry_root)

    def _resolve_target(self) -> str:
        from registry import RegistryError

        try:
            return self._registry().resolve(self.name, self.ref)
        except RegistryError as e:
            raise ConfigError(f"--model {self.name}@{self.ref}: {e}") from None

    def _evidence(self, version: str) -> dict[str, Any]:
        """The promotion that made ``version`` the alias's value: when, by whom, why, with what evidence."""
        try:
            for e in reversed(self._registry().history(self.name, self.ref if self.follows else None)):
                if e.to_version == version:
                    return {"action": e.action, "alias": e.alias, "time": e.time.isoformat(), "actor": e.actor,
                            "reason": e.reason, "evidence": e.evidence, "flow_run_id": e.flow_run_id}
        except Exception:  # noqa: BLE001 - evidence is informative; the model serves without it
            logger.debug("no history for %s", self.name, exc_info=True)
        return {}

    def load(self, version: str | None) -> Loaded:
        """Load and check ``version`` (None: the GGUF file of --model). Raises So8tError on a bad version."""
        t0 = time.monotonic()
        cfg = self.cfg
        if version is None:
            decider = Decider(cfg.model, cfg.calibration, cfg.decision_prompt, None, n_ctx=cfg.n_ctx,
                              n_threads=cfg.n_threads)
        else:
            # the version's own calibration and prompt (resolve_calibrated refuses a version without one)
            decider = Decider(f"{self.name}@{version}", None, None, cfg.registry_root, n_ctx=cfg.n_ctx,
                              n_threads=cfg.n_threads)
        self._live.add(decider)
        return Loaded(decider=decider, version=version, since=time.time(), load_seconds=time.monotonic() - t0,
                      evidence=self._evidence(version) if version else {}, files=file_keys(_checked_files(decider)))

    def start(self) -> None:
        """Load the first model (errors are the caller's: the service does not start) and start following."""
        version = self._resolve_target() if self.name is not None else None
        self.target = version
        if self.name is not None:
            self._state_file = self._registry().state_file(self.name)
        self._swap(self.load(version))
        if self.follows:
            self._thread = threading.Thread(target=self._follow, name="so8t-alias-follower", daemon=True)
            self._thread.start()

    def _swap(self, new: Loaded, warm: bool = False) -> None:
        """Serve ``new``; the replaced version stays warm (up to ``warm_versions`` in all) or is retired: closed
        now when no request uses it, else by the last one to return."""
        to_close = []
        with self._lock:
            old, self.current = self.current, new
            self._warm.pop(new.version, None)
            self.error = None
            if old is not None and old is not new:
                if self.follows and old.version is not None and self.cfg.warm_versions > 1:
                    self._warm[old.version] = old
                else:
                    to_close.append(old)
            while len(self._warm) > self.cfg.warm_versions - 1:
                to_close.append(self._warm.popitem(last=False)[1])
            for gone in to_close:
                gone.retired = True
            to_close = [gone for gone in to_close if gone.in_use == 0]
        for gone in to_close:
            gone.decider.close()
        self.metrics.swaps.inc()
        if warm:
            self.metrics.warm_swaps.inc()
        self._count_loaded()
        self.metrics.stale.set(0)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(version=new.version or "file", sha256=new.decider.info.sha256).set(1)
        logger.info("serving %s (%s), %s", new.version or new.decider.info.gguf, new.decider.info.sha256[:12],
                    "still loaded: swapped without loading" if warm else f"loaded in {new.load_seconds:.2f} s")

    def _count_loaded(self) -> None:
        self.metrics.loaded.set(sum(1 for d in self._live if not d.closed))

    def _take_warm(self, version: str) -> Loaded | None:
        """The warm copy of ``version`` if its checked files are unchanged since it was loaded (else closed)."""
        with self._lock:
            w = self._warm.get(version)
        if w is None:
            return None
        if file_keys([f[0] for f in w.files]) == w.files:
            w.since, w.evidence = time.time(), self._evidence(version)
            return w
        logger.warning("%s %s changed on disk since it was loaded: loading it again", self.name, version)
        with self._lock:
            self._warm.pop(version, None)
            w.retired = True
            close = w.in_use == 0
        if close:
            w.decider.close()
        return None

    def poll_once(self) -> None:
        """Resolve the alias; load and swap in a new version (see the module docstring)."""
        with self._load_lock:
            self._poll_locked()

    def _recently_failed(self, version: str) -> bool:
        failed_at = self._failed.get(version)
        return failed_at is not None and time.monotonic() - failed_at < self.cfg.retry_seconds

    def _alias_moved(self) -> bool:
        """Whether the alias names a version other than the one served and not known to fail: one ``stat``
        of the state file per call, a read only when it changed."""
        try:
            st = os.stat(self._state_file)
        except OSError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._seen:
            try:
                self.target = self._resolve_target()
            except So8tError:
                return False
            self._seen = key
        cur = self.current
        return cur is not None and self.target != cur.version and not self._recently_failed(self.target)

    def _poll_locked(self) -> None:
        try:
            version = self._resolve_target()
        except So8tError as e:
            self._fail(None, str(e))
            return
        self.target = version
        cur = self.current
        if cur is not None and cur.version == version:
            if self.error is not None:
                with self._lock:
                    self.error = None
                self.metrics.stale.set(0)
            return
        if self._recently_failed(version):
            return
        warm = self._take_warm(version)
        if warm is not None:
            self._swap(warm, warm=True)
            return
        logger.info("%s@%s moved to %s: loading it", self.name, self.ref, version)
        try:
            new = self.load(version)
        except So8tError as e:
            self._fail(version, str(e))
            return
        except Exception as e:  # noqa: BLE001 - any failure keeps the old model serving
            logger.exception("loading %s %s failed", self.name, version)
            self._fail(version, f"{type(e).__name__}: {e}")
            return
        self._failed.pop(version, None)
        self._swap(new)

    def _fail(self, version: str | None, why: str) -> None:
        if version is not None:
            self._failed[version] = time.monotonic()
            self.metrics.swap_failures.inc()
        with self._lock:
            self.error = why if version is None else f"{self.name} {version}: {why}"
        self.metrics.stale.set(1)
        logger.error("not swapped, still serving %s: %s", self.current.version if self.current else None, self.error)

    def _follow(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the follower never dies
                logger.exception("alias follower")

    @contextmanager
    def use(self) -> Iterator[Loaded | None]:
        """The current model, held for the duration of one request (None: nothing loaded).

        When the followed alias has moved since the last look (a ``stat``), the request first waits for
        the new version to be loaded and swapped in (or to fail its check), so a request that starts after
        a promotion or rollback is committed is decided by the version it made production."""
        if self.follows and self._alias_moved():
            self.poll_once()
        with self._lock:
            cur = self.current
            if cur is not None:
                cur.in_use += 1
        try:
            yield cur
        finally:
            if cur is not None:
                with self._lock:
                    cur.in_use -= 1
                    close = cur.retired and cur.in_use == 0
                if close:
                    cur.decider.close()
                    self._count_loaded()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            cur, self.current = self.current, None
            warm = list(self._warm.values())
            self._warm.clear()
        for loaded in [cur, *warm]:
            if loaded is not None:
                loaded.decider.close()

    @property
    def stale(self) -> bool:
        cur = self.current
        return self.error is not None or (self.follows and cur is not None and self.target != cur.version)

    def describe(self) -> dict[str, Any]:
        cur = self.current
        out: dict[str, Any] = {"follows": f"{self.name}@{self.ref}" if self.follows else None,
                               "alias_version": self.target, "stale": self.stale, "error": self.error}
        if cur is not None:
            info = cur.decider.info
            out.update({
                "version": cur.version, "model": info.model_dump(mode="json"),
                "thresholds": cur.decider.thresholds.model_dump(), "decision_rule": cur.decider.decision_rule,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cur.since)),
                "load_seconds": round(cur.load_seconds, 3), "warm_versions": list(self._warm),
                "gate": cur.evidence or None,
                "warnings": cur.decider.warnings,
            })
        return out


# ----------------------------------------------------------------------------- the app
class Service:
    """What the app's routes do: bearer auth, body limits, admission (``max_queue``), and the /v1 handlers.

    A handler takes the parsed JSON body (None for a GET) and returns a response; it runs in a worker thread
    (a model call blocks), admitted by :meth:`guarded`, which also counts the request in the metrics."""

    def __init__(self, cfg: ServeConfig, holder: ModelHolder, metrics: Metrics) -> None:
        self.cfg = cfg
        self.holder = holder
        self.metrics = metrics
        self.key = cfg.api_key if cfg.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        self.admitted = 0
        self._admit_lock = threading.Lock()

    def error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        from fastapi.responses import JSONResponse

        self.metrics.errors.labels(kind=kind).inc()
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    def unavailable(self):
        return self.error(503, "no model loaded yet", "unavailable", {"Retry-After": "1"})

    # ------------------------------------------------------------------------- admission
    async def guarded(self, request, route: str, handler):
        """``handler`` behind auth, the body checks and admission, counted in the metrics by ``route``."""
        t0 = time.perf_counter()
        resp = await self._guarded(request, handler)
        self.metrics.requests.labels(route=route, status=str(resp.status_code)).inc()
        self.metrics.latency.labels(route=route).observe(time.perf_counter() - t0)
        return resp

    async def _guarded(self, request, handler):
        refused, doc = await self._read_body(request)
        if refused is not None:
            return refused
        if not self._admit():
            return self.error(429, f"{self.cfg.max_queue} requests already admitted: retry shortly", "overloaded",
                              {"Retry-After": "1"})
        return await self._run_admitted(handler, doc)

    async def _read_body(self, request) -> tuple[Any, Any]:
        """``(error response, None)`` for a wrong token, a body too large or not JSON; else ``(None, JSON)``."""
        cfg = self.cfg
        if self.key is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.key.encode()):
                return self.error(401, "missing or wrong bearer token: send Authorization: Bearer <key>", "auth",
                                  {"WWW-Authenticate": "Bearer"}), None
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            return self.error(413, f"body of {length} bytes, over the limit of {cfg.max_body_bytes}", "too_large"), None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                return self.error(413, f"body over the limit of {cfg.max_body_bytes} bytes", "too_large"), None
        try:
            doc = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return self.error(422, f"body: not JSON ({e})", "invalid"), None
        if doc is None and request.method == "POST":
            return self.error(422, "body: empty: send a JSON object", "invalid"), None
        return None, doc

    def _admit(self) -> bool:
        with self._admit_lock:
            if self.admitted >= self.cfg.max_queue:
                return False
            self.admitted += 1
            self.metrics.queue.set(self.admitted)
        return True

    def _release(self) -> None:
        with self._admit_lock:
            self.admitted -= 1
            self.metrics.queue.set(self.admitted)

    async def _run_admitted(self, handler, doc: Any):
        """Run ``handler`` in a worker thread; the request stays admitted until it returns, or, for a streamed
        response, until its last byte is sent."""
        from fastapi.responses import StreamingResponse
        from starlette.concurrency import run_in_threadpool

        streaming = False
        try:
            resp = await run_in_threadpool(handler, doc)
            if isinstance(resp, StreamingResponse):  # admitted until its last byte is sent
                inner, streaming = resp.body_iterator, True

                async def until_done():
                    try:
                        async for part in inner:
                            yield part
                    finally:
                        self._release()

                resp.body_iterator = until_done()
            return resp
        finally:
            if not streaming:
                self._release()

    # ------------------------------------------------------------------------- handlers
    def decide(self, doc: Any):
        """``POST /v1/decide``."""
        from fastapi.responses import JSONResponse

        cfg = self.cfg
        try:
            req = DecideRequest.model_validate(doc)
        except ValidationError as e:
            return self.error(422, one_line(e), "invalid")
        if (req.text is None) == (req.texts is None):
            return self.error(422, "body: give either 'text' or 'texts'", "invalid")
        texts = [req.text] if req.text is not None else req.texts
        if not texts:
            return self.error(422, "texts: empty list", "invalid")
        if len(texts) > cfg.max_batch:
            return self.error(422, f"texts: {len(texts)} texts, over the limit of {cfg.max_batch} per request", "invalid")
        with self.holder.use() as cur:
            if cur is None:
                return self.unavailable()
            t0 = time.perf_counter()
            try:
                out = cur.decider.decide(texts, "text" if req.text is not None else "texts")
            except So8tError as e:
                return self.error(422, str(e), "invalid")
            for d in out:
                self.metrics.decisions.labels(decision=d.decision).inc()
            info = cur.decider.info
            body = {"decisions": [d.model_dump() for d in out], "version": cur.version, "sha256": info.sha256,
                    "thresholds": cur.decider.thresholds.model_dump(),
                    "latency_ms": (time.perf_counter() - t0) * 1000.0}
        if req.text is not None:
            body = {**body.pop("decisions")[0], **body}
        return JSONResponse(body)

    def chat(self, doc: Any):
        """``POST /v1/chat/completions``."""
        from fastapi.responses import JSONResponse

        cfg = self.cfg
        try:
            req = ChatRequest.model_validate(doc)
        except ValidationError as e:
            return self.error(422, one_line(e), "invalid")
        if sum(len(m.content) for m in req.messages) > MAX_TEXT_CHARS:
            return self.error(422, f"messages: over {MAX_TEXT_CHARS} characters in all", "invalid")
        kwargs = dict(max_tokens=min(req.max_tokens or cfg.max_tokens, cfg.max_tokens), temperature=req.temperature,
                      top_p=req.top_p, stop=req.stop, seed=req.seed)
        messages = [m.model_dump() for m in req.messages]
        if req.stream:
            return self.chat_stream(messages, kwargs)
        with self.holder.use() as cur:
            if cur is None:
                return self.unavailable()
            try:
                out = cur.decider.chat(messages, **kwargs)
            except ValueError as e:  # llama.cpp: the prompt does not fit the context
                return self.error(422, f"messages: {e}", "invalid")
            out["model"] = f"{self.holder.name}@{cur.version}" if cur.version else cur.decider.info.gguf
        return JSONResponse(out)

    def chat_stream(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]):
        """Server-sent events as OpenAI streams them (``data: {chunk}`` ... ``data: [DONE]``). The first chunk is
        made before answering, so a prompt over the context is a 422, not a broken stream."""
        from fastapi.responses import StreamingResponse

        use = self.holder.use()
        cur = use.__enter__()
        if cur is None:
            use.__exit__(None, None, None)
            return self.unavailable()
        name = f"{self.holder.name}@{cur.version}" if cur.version else cur.decider.info.gguf
        chunks = cur.decider.chat_stream(messages, **kwargs)
        try:
            first = next(chunks)
        except ValueError as e:
            chunks.close()
            use.__exit__(None, None, None)
            return self.error(422, f"messages: {e}", "invalid")
        except BaseException:
            chunks.close()
            use.__exit__(None, None, None)
            raise

        def events() -> Iterator[str]:
            try:
                for chunk in itertools.chain([first], chunks):
                    yield f"data: {json.dumps({**chunk, 'model': name}, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                chunks.close()
                use.__exit__(None, None, None)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def model(self, _doc: Any):
        """``GET /v1/model``."""
        from fastapi.responses import JSONResponse

        return JSONResponse(self.holder.describe())


def create_app(cfg: ServeConfig, holder: ModelHolder | None = None, metrics: Metrics | None = None):
    """The FastAPI app of a service (the holder is started by the caller, or by the app's lifespan); what its
    routes do is :class:`Service`'s."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    metrics = metrics or Metrics()
    holder = holder or ModelHolder(cfg, metrics)
    service = Service(cfg, holder, metrics)

    @asynccontextmanager
    async def lifespan(_app):
        if holder.current is None:
            await run_in_threadpool(holder.start)
        yield
        await run_in_threadpool(holder.stop)

    app = FastAPI(title="so8t serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.holder = holder
    app.state.metrics = metrics

    @app.post("/v1/decide")
    async def decide(request: Request):
        return await service.guarded(request, "/v1/decide", service.decide)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await service.guarded(request, "/v1/chat/completions", service.chat)

    @app.get("/v1/model")
    async def model(request: Request):
        return await service.guarded(request, "/v1/model", service.model)

    @app.get("/healthz")
    async def healthz():
        metrics.requests.labels(route="/healthz", status="200").inc()
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        d = holder.describe()
        ready = holder.current is not None
        status = 200 if ready else 503
        metrics.requests.labels(route="/readyz", status=str(status)).inc()
        return JSONResponse({"ready": ready, "version": d.get("version"), "alias_version": d["alias_version"],
                             "stale": d["stale"], "error": d["error"]}, status_code=status)

    @app.get("/metrics")
    async def prom():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(cfg: ServeConfig) -> int:
    """Load the model (bad input: So8tError before listening), then serve until interrupted."""
    import uvicorn

    metrics = Metrics()
    holder = ModelHolder(cfg, metrics)
    holder.start()
    app = create_app(cfg, holder, metrics)
    auth = "bearer token required" if (cfg.api_key or os.environ.get(API_KEY_ENV)) else "no auth"
    logger.info("listening on http://%s:%d (%s)", cfg.host, cfg.port, auth)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", access_log=True)
    return 0


# ----------------------------------------------------------------------------- clients
class ServiceNotFollowing(So8tError):
    """A running service did not serve the expected version in time."""


def wait_until_served(url: str, name: str, version: str, timeout_s: float = 30.0, *, api_key: str | None = None,
                      poll_s: float = 0.2) -> dict[str, Any]:
    """Poll ``GET {url}/v1/model`` until the service serves ``name`` at ``version``; returns its answer.

    The registry alias is the contract between a flow and the services that follow it: a flow that
    moved the alias calls this to learn that the move reached a service it was told about.

    Raises:
        ServiceNotFollowing: not served within ``timeout_s``; the message says what is served instead
            and why (the service's own error, e.g. a version that failed its check), or that the service
            could not be reached.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    problem = "no answer yet"
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=min(10.0, max(timeout_s, 1.0))) as client:
        while True:
            try:
                r = client.get("/v1/model")
                if r.status_code == 200:
                    last = r.json()
                    reg = ((last.get("model") or {}).get("registry") or {})
                    if reg.get("name") == name and last.get("version") == version:
                        return last
                    problem = (f"it serves {reg.get('name') or last.get('model', {}).get('gguf')} "
                               f"{last.get('version')}" + (f" (its alias names {last.get('alias_version')}; "
                                                           f"{last['error']})" if last.get("error") else ""))
                else:
                    problem = f"GET /v1/model answered HTTP {r.status_code}"
            except httpx.HTTPError as e:
                problem = f"unreachable ({type(e).__name__})"
            if time.monotonic() >= deadline:
                raise ServiceNotFollowing(f"the service at {url} does not serve {name} {version} after {timeout_s:g} s: "
                                          f"{problem}")
            time.sleep(poll_s)
