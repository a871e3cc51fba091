"""``so8t decide``: the calibrated ALLOW / ESCALATE / DENY decision for one request at a time.

:class:`Decider` loads a calibrated model once (a GGUF plus its ``calibration_results.json`` and decision
prompt, from files or a registry reference such as ``so8t-smollm2@production``, resolved by
:func:`so8t.calibrate.evaluate.resolve_calibrated`, the rule ``so8t evaluate`` uses) and answers requests one by one.

**One code path with calibration.** The prompt is rendered and tokenized by the scorer's own
:class:`so8t.calibrate.scoring._Prompter`, the label tokens and scoring mode come from the same functions, each
request is scored by :func:`so8t.calibrate.scoring._score_sample` (the loop body of
:func:`so8t.calibrate.scoring.score_gguf`), and the decision is :func:`so8t.calibrate.metrics.decide` on
``softmax(z / T)``. The shared prompt prefix (chat template and system turn, up to the request) is
evaluated once at load time; each request evaluates only its own tokens after it, exactly as
calibration scored its records, so the scores of a record equal those calibration computed
(``tests/integration/test_decide.py`` checks it on the bundled validation records).

**Checks before the first answer**: the calibration was fitted on this GGUF (its recorded
``model_sha256`` equals the GGUF's digest; refused otherwise unless ``allow_other_model``), it scored
with this decision prompt, and the scoring mode it recorded is the one used.

One :class:`Decider` is not thread-safe by itself: :meth:`Decider.decide` holds a lock, so concurrent
callers (the HTTP service) are served one at a time by the one llama.cpp context.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from so8t.decision import LABELS
from so8t.errors import DataError, ModelError
from so8t.calibrate.evaluate import DECISION_RULE, CalibratedModel, RegistrySource, resolve_calibrated

logger = logging.getLogger(__name__)

#: Longest request text accepted (characters); a longer one is refused, not truncated.
MAX_TEXT_CHARS = 32_000
#: Probe texts whose rendered prompts share exactly the part before the request (the shared prefix).
_PROBES = ("A", "Z", "1", "?", "こんにちは", " x", "\n")


class Thresholds(BaseModel):
    """The calibrated decision rule applied."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(description="T of p = softmax(z / T).")
    tau_deny: float = Field(description="DENY if p_DENY >= tau_deny.")
    tau_escalate: float = Field(description="Else ALLOW if p_ALLOW >= tau_escalate, else ESCALATE.")


class ServedModel(BaseModel):
    """Which model answered."""

    model_config = ConfigDict(frozen=True)

    argument: str = Field(description="The model as given (a GGUF path or NAME@REF).")
    gguf: str = Field(description="The GGUF file scored.")
    sha256: str = Field(description="sha256 of the GGUF.")
    calibration_sha256: str = Field(description="sha256 of the calibration file.")
    decision_prompt_sha256: str = Field(description="sha256 of the decision prompt.")
    scoring_mode: str = Field(description="'first-token' or 'sequence'.")
    registry: RegistrySource | None = Field(None, description="Registry name, reference and version for NAME@REF.")

    @property
    def version(self) -> str | None:
        return self.registry.version if self.registry else None


class Decision(BaseModel):
    """One request's decision."""

    model_config = ConfigDict(frozen=True)

    decision: str = Field(description="ALLOW, ESCALATE or DENY.")
    probabilities: dict[str, float] = Field(description="Calibrated softmax(z / T) per label.")
    scores: dict[str, float] = Field(description="Raw label scores z (logits, or log-probabilities in sequence mode).")
    latency_ms: float = Field(description="Scoring and deciding this request (milliseconds).")
    tokens: int = Field(description="Prompt tokens of the request, shared prefix included.")


def check_text(text: Any, where: str = "text") -> str:
    """A request text: a non-blank string of at most :data:`MAX_TEXT_CHARS` characters.

    Raises:
        DataError: naming ``where`` and the rule.
    """
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: empty or only whitespace: pass the request to decide on")
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(f"{where}: {len(text)} characters, over the limit of {MAX_TEXT_CHARS}: shorten the request")
    return text


def release_freed_heap() -> bool | None:
    """Return freed heap memory to the system (glibc's ``malloc_trim(0)``); None where there is no glibc.

    llama.cpp's buffers of a closed model are freed to the C allocator, which keeps them in its arenas (one
    per thread that allocated): a service that loads and closes models from several threads grows by
    roughly a model every few swaps without it (measured: 40 load/close cycles from fresh threads, RSS
    287 -> 588 MB; with it flat at ~457 MB, BENCHMARKS.md)."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


class Decider:
    """A calibrated model loaded for decisions (see the module docstring).

    Args:
        model: A GGUF file or a registry reference ``NAME@REF``.
        calibration / decision_prompt / registry_root: as for ``so8t evaluate`` (None: the defaults).
        n_ctx: llama.cpp context; a request whose prompt does not fit is refused.
        n_threads: CPU threads (0: half the logical cores).
        allow_other_model: Accept a calibration fitted on another GGUF (a warning instead of an error).

    Raises:
        ConfigError / ModelError / DataError: before anything is loaded, one line each.
    """

    def __init__(self, model: str, calibration: str | None = None, decision_prompt: str | None = None,
                 registry_root: str | None = None, *, n_ctx: int = 2048, n_threads: int = 0,
                 allow_other_model: bool = False, calibrated: CalibratedModel | None = None) -> None:
        from so8t.base_models import sha256_file
        from so8t.calibrate.scoring import _load_model, _Prompter, common_prefix_length, resolve_mode

        c = calibrated or resolve_calibrated(model, calibration, decision_prompt, registry_root)
        self.calibrated = c
        self.warnings: list[str] = []
        gguf_sha = c.model.gguf_sha256 or sha256_file(c.model.gguf)  # a registry blob was hashed on resolve
        doc = c.calibration_doc
        fitted_on = doc.get("model_sha256")
        if isinstance(fitted_on, str) and fitted_on != gguf_sha:
            msg = (f"{c.calibration.source}: the calibration was fitted on another model (sha256 {fitted_on[:12]}, "
                   f"this GGUF {gguf_sha[:12]})")
            if not allow_other_model:
                raise ModelError(msg + ": calibrate this model (so8t calibrate) or pass its own calibration")
            self.warnings.append(msg)
        elif not isinstance(fitted_on, str):
            self.warnings.append(f"{c.calibration.source} does not record the model it was fitted on: its digest "
                                 "cannot be checked")
        scoring = doc.get("scoring") if isinstance(doc.get("scoring"), dict) else {}
        recorded_prompt = scoring.get("decision_prompt_sha256")
        if isinstance(recorded_prompt, str) and recorded_prompt != c.prompt.sha256():
            self.warnings.append(f"the calibration scored with another decision prompt (sha256 {recorded_prompt[:12]}) "
                                 f"than this one ({c.prompt.sha256()[:12]}, {c.prompt_source})")
        recorded_mode = scoring.get("mode") if scoring.get("mode") in ("first-token", "sequence") else "auto"
        for w in self.warnings:
            logger.warning("%s", w)

        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self._llm = _load_model(c.model.gguf, n_ctx, n_threads)
        try:
            self._prompter = _Prompter(self._llm, None, c.prompt)
            probes = [self._prompter.tokenize(self._prompter.render(t)) for t in _PROBES]
            self.label_ids = [self._prompter.label_ids(self._prompter.render(_PROBES[0]), probes[0], lab)
                              for lab in LABELS]
            self.mode = resolve_mode(self.label_ids, recorded_mode)
            self.n_prefix = common_prefix_length(probes)
            self._prefix = probes[0][: self.n_prefix]
            self._llm.reset()
            if self.n_prefix:
                self._llm.eval(self._prefix)
        except BaseException:
            self._llm.close()
            raise
        self.info = ServedModel(
            argument=model, gguf=str(Path(c.model.gguf).resolve()), sha256=gguf_sha,
            calibration_sha256=c.calibration_sha256, decision_prompt_sha256=c.prompt.sha256(),
            scoring_mode=self.mode, registry=c.model.registry)
        cal = c.calibration
        self.thresholds = Thresholds(temperature=cal.temperature, tau_deny=cal.tau_deny, tau_escalate=cal.tau_escalate)
        self.decision_rule = DECISION_RULE
        logger.info("decider ready: %s (%s mode, %d shared prefix tokens, T %.4g, tau_deny %.4g, tau_escalate %.4g)",
                    self.info.gguf, self.mode, self.n_prefix, cal.temperature, cal.tau_deny, cal.tau_escalate)

    # ------------------------------------------------------------------------- scoring
    def _tokens(self, text: str, where: str) -> list[int]:
        ids = self._prompter.tokenize(self._prompter.render(check_text(text, where)))
        longest = max(len(t) for t in self.label_ids) if self.mode == "sequence" else 1
        if len(ids) + longest - 1 > self.n_ctx:
            raise DataError(f"{where}: the prompt is {len(ids)} tokens, over the context of {self.n_ctx}: shorten "
                            "the request (or serve with a larger --n_ctx)")
        return ids

    def _score(self, ids: list[int]) -> np.ndarray:
        """Label scores of one prompt; the KV cache keeps the shared prefix between requests."""
        from so8t.calibrate.scoring import _score_sample

        llm = self._llm
        held = list(llm.input_ids[: llm.n_tokens])
        k = 0
        limit = min(len(held), self.n_prefix, len(ids) - 1)
        while k < limit and held[k] == ids[k]:
            k += 1
        if k < self.n_prefix and ids[: self.n_prefix] == self._prefix:
            # the cache lost part of the prefix (a request that diverged inside it): rebuild it in one call,
            # so every request's scores come from the same KV as calibration's
            llm.n_tokens = 0
            llm.eval(self._prefix)
            k = self.n_prefix
        return _score_sample(llm, ids, k, self.label_ids, self.mode)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Raw label scores ``(n, 3)`` in ``LABELS`` order, as calibration computes them."""
        ids = [self._tokens(t, f"texts[{i}]") for i, t in enumerate(texts)]
        with self._lock:
            z = np.stack([self._score(s) for s in ids]) if ids else np.empty((0, len(LABELS)))
        if not np.all(np.isfinite(z)):
            raise ModelError(f"{self.info.gguf}: non-finite label scores: the model is broken")
        return z

    def decide(self, texts: Sequence[str], where: str = "texts") -> list[Decision]:
        """The calibrated decision of every text (checked first: a bad one refuses the whole batch)."""
        from so8t.calibrate.metrics import decide, softmax

        ids = [self._tokens(t, f"{where}[{i}]" if len(texts) > 1 else where) for i, t in enumerate(texts)]
        out: list[Decision] = []
        with self._lock:
            for s in ids:
                t0 = time.perf_counter()
                z = self._score(s)
                if not np.all(np.isfinite(z)):
                    raise ModelError(f"{self.info.gguf}: non-finite label scores: the model is broken")
                p = softmax(z[None, :], self.thresholds.temperature)
                d = int(decide(p, self.thresholds.tau_deny, self.thresholds.tau_escalate)[0])
                out.append(Decision(
                    decision=LABELS[d], probabilities=dict(zip(LABELS, map(float, p[0]))),
                    scores=dict(zip(LABELS, map(float, z))), latency_ms=(time.perf_counter() - t0) * 1000.0,
                    tokens=len(s)))
        return out

    def decide_one(self, text: str, where: str = "text") -> Decision:
        return self.decide([text], where)[0]

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        """An OpenAI-shaped chat completion by llama-cpp-python's ``create_chat_completion`` (the GGUF's chat
        template) on this model; the decision prefix is re-evaluated by the next decision that needs it."""
        with self._lock:
            return self._llm.create_chat_completion(messages=messages, **kwargs)

    def chat_stream(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[dict[str, Any]]:
        """:meth:`chat` as OpenAI-shaped chunks (``stream=True``); the model is held until the last chunk
        (or until the consumer closes the generator)."""
        with self._lock:
            yield from self._llm.create_chat_completion(messages=messages, stream=True, **kwargs)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` released the model."""
        return self._llm is None

    def close(self) -> None:
        """Release the model (its mmap, KV cache and buffers), and return the freed heap to the system."""
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
                release_freed_heap()

    def __enter__(self) -> Decider:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- request files
def read_requests(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` of a JSONL file of requests: ``{"text": ...}`` with an optional ``"id"`` (string or
    integer) echoed in the output; other fields (a label, a source) are allowed and ignored.

    Raises:
        DataError: ``FILE:LINE: field 'F': rule`` for the first bad line; a file with no record.
    """
    from so8t.training.data import iter_json_objects

    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{p}: is a directory (--input): pass a JSONL file of {{\"text\"}} records")
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, obj in iter_json_objects(p, what="request"):
        if "text" not in obj:
            raise DataError(f"{p}:{lineno}: field 'text': missing: every request needs the text to decide on")
        check_text(obj["text"], f"{p}:{lineno}: field 'text'")
        rid = obj.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
            raise DataError(f"{p}:{lineno}: field 'id': expected a string or an integer, got {type(rid).__name__}")
        out.append((lineno, obj))
    if not out:
        raise DataError(f"{p}: no records: pass a JSONL file of {{\"text\"}} records")
    return out
