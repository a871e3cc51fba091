"""The calibration stage: score a GGUF on labelled validation data, calibrate, write and read the results.

``so8t calibrate`` (:mod:`so8t.calibrate.cli`) is its command line; the runbook's ``calibrate_aed.py``
maps onto it flag for flag (``scripts/training/calibrate_aed.py`` is a shim). Plain-Python entry points: :func:`calibrate_gguf` (returns values, writes
nothing), :func:`write_calibration` (the files) and :func:`run_calibration` (both; what the
Prefect task and the demo call).

Outputs, written into ``output_dir`` only after everything succeeded (each file atomically, the
JSON last): ``calibration_results.json`` (a :class:`~so8t.calibrate.calibration.CalibrationResult` plus a
``"scoring"`` block: mode, prompt, template, cache key), ``reliability_diagram.png`` and
``scores.npz`` (the label scores and split the calibration used, so that every number in the JSON
can be recomputed: see :func:`load_calibration_scores`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from so8t.base_models import sha256_file
from so8t.calibrate.calibration import CalibrationConfig, CalibrationResult, split_stratified
from so8t.decision import LABELS, resolve_prompt
from so8t.errors import DataError
from so8t.calibrate.metrics import softmax
from so8t.calibrate.reliability import plot_reliability
from so8t.outpaths import check_output_dir
from so8t.calibrate.scoring import Scores, check_gguf, read_labelled, score_gguf
from so8t.shards import DASK_SCHEDULER_HELP, DASK_WORKERS_HELP, ShardExecutor, executor_context

logger = logging.getLogger(__name__)

RESULTS_FILE = "calibration_results.json"
DIAGRAM_FILE = "reliability_diagram.png"
SCORES_FILE = "scores.npz"


class CalibrateCommandConfig(CalibrationConfig):
    """Calibration stage: which model and data, where results go, and how to score."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    temperature_bounds: tuple[float, float] = Field(
        (0.05, 20.0), description="Search range of the temperature; on the command line 'low,high', e.g. 0.05,20."
    )
    model: str = Field(description="The GGUF model file to calibrate.")
    val_data: str = Field(description="Validation data, JSONL of {\"text\", \"label\"} records (label ALLOW/ESCALATE/DENY).")
    output_dir: str = Field(
        description="Where calibration_results.json, reliability_diagram.png and scores.npz are written."
    )
    scoring_mode: Literal["auto", "first-token", "sequence"] = Field(
        "auto", description="Label scores: 'first-token' logits, 'sequence' log-probabilities, or 'auto' (first-token "
                            "when the labels' first tokens differ)."
    )
    n_ctx: int = Field(2048, ge=16, description="llama.cpp context size; every prompt must fit.")
    n_threads: int = Field(0, ge=0, description="CPU threads for llama.cpp, prompt batches included (0: half the logical "
                                                "cores; with dask: each worker's thread count).")
    decision_prompt: str | None = Field(
        None, description="JSON file {system, user_template} with the decision prompt the model was trained on "
        "(default: decision_prompt.json beside the model file, where so8t convert puts it, else the built-in prompt).")
    no_cache: bool = Field(False, description="Re-score even if cached scores exist (and do not write the cache).")
    dask_workers: int = Field(0, ge=0, description=DASK_WORKERS_HELP)
    dask_scheduler: str | None = Field(None, description=DASK_SCHEDULER_HELP)
    fail_on_gate: bool = Field(False, description="Exit 1 when the calibrated model fails the gate (default: exit 0).")

    def calibration(self) -> CalibrationConfig:
        """The numerical settings alone."""
        return CalibrationConfig(**self.model_dump(include=set(CalibrationConfig.model_fields)))



@dataclass(frozen=True)
class CalibrationOutcome:
    """What :func:`calibrate_gguf` produced: the result, the scores behind it and the split used."""

    result: CalibrationResult
    scores: Scores
    fit_idx: np.ndarray
    holdout_idx: np.ndarray

    def scores_npz(self) -> bytes:
        """The content of ``scores.npz`` (see :func:`load_calibration_scores`)."""
        buf = io.BytesIO()
        np.savez(
            buf, z=self.scores.z.astype(np.float64), y=self.scores.y.astype(np.int64),
            fit_idx=self.fit_idx.astype(np.int64), holdout_idx=self.holdout_idx.astype(np.int64),
            labels=np.array(self.result.labels), label_texts=np.array(self.scores.label_texts),
        )
        return buf.getvalue()

    def document(self) -> dict[str, Any]:
        """The content of ``calibration_results.json``: the result plus a ``"scoring"`` block."""
        doc = json.loads(self.result.model_dump_json())
        doc["scoring"] = self.scores.info()
        return doc


# ----------------------------------------------------------------------------- core
def _check_output_dir(path: str | Path) -> Path:
    # a file, a path under a file, or a place that cannot be written: refused before any scoring
    return check_output_dir(path, "output_dir")


def calibrate_gguf(cfg: CalibrateCommandConfig, executor: ShardExecutor | None = None) -> CalibrationOutcome:
    """Check inputs, score the model (cached), calibrate. Writes nothing to ``output_dir``.

    Args:
        cfg: The stage settings.
        executor: Score in shards on these workers (:mod:`so8t.shards`); None: the plain dask cluster
            ``cfg.dask_workers`` / ``cfg.dask_scheduler`` ask for, else in this process.

    Returns:
        A :class:`CalibrationOutcome` (result with model/data hashes, label token ids and paths).

    Raises:
        ModelError: Missing, unreadable or unsupported model.
        DataError: Missing or malformed data, a label without examples.
        ConfigError: ``output_dir`` is a file.
    """
    from so8t.calibrate.calibration import calibrate

    _check_output_dir(cfg.output_dir)
    model = check_gguf(cfg.model)
    data = Path(cfg.val_data).expanduser()
    if not data.is_file():
        raise DataError(f"{data}: validation data file not found: pass a JSONL of {{\"text\", \"label\"}} records")
    texts, labels = read_labelled(data)
    counts = {lab: labels.count(lab) for lab in LABELS}
    missing = [lab for lab, c in counts.items() if c == 0]
    if missing:
        raise DataError(f"{data}: labels {missing} have no example (counts {counts}): calibration needs every label "
                        "in the validation data; add examples of the missing labels")
    if max(counts.values()) < 2:  # calibrate() would refuse after scoring: refuse before, caching nothing
        raise DataError(f"{data}: no label has 2 or more records (counts {counts}): nothing could be held out for the "
                        "gate's metrics; add validation records (the runbook recommends >= 100)")
    prompt = resolve_prompt(cfg.decision_prompt, model)
    with executor_context(executor, cfg.dask_workers, cfg.dask_scheduler) as ex:
        scores = score_gguf(model, texts, labels, mode=cfg.scoring_mode, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
                            use_cache=not cfg.no_cache, data_sha256=sha256_file(data), prompt=prompt, executor=ex)
    num = cfg.calibration()
    result = calibrate(scores.z, scores.y, num)
    result = result.model_copy(update=dict(
        model_sha256=scores.model_sha256, data_sha256=scores.data_sha256,
        label_token_ids=scores.label_token_ids, model_path=str(model.resolve()), data_path=str(data.resolve()),
    ))
    fit_idx, holdout_idx = split_stratified(scores.y, num.holdout_fraction, num.seed)  # the split calibrate() used
    return CalibrationOutcome(result=result, scores=scores, fit_idx=fit_idx, holdout_idx=holdout_idx)


def write_calibration(outcome: CalibrationOutcome, output_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write ``calibration_results.json``, ``reliability_diagram.png`` and ``scores.npz``.

    All are built in a temporary folder beside ``output_dir``, then moved in (PNG, then NPZ, JSON
    last), so a failure before the moves leaves ``output_dir`` as it was. The JSON's ``"scoring"``
    block names the NPZ and its sha256.

    Returns:
        ``(json_path, png_path, npz_path)``.
    """
    res, z, y = outcome.result, outcome.scores.z, outcome.scores.y
    out = _check_output_dir(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.calibrate-", dir=out.parent))
    try:
        plot_reliability(
            softmax(z, res.before.temperature), softmax(z, res.temperature), y, tmp / DIAGRAM_FILE,
            n_bins=res.config.n_bins,
            title=f"Reliability, all {res.n_samples} samples (T {res.before.temperature:g} -> {res.temperature:.3g})",
        )
        npz = outcome.scores_npz()
        (tmp / SCORES_FILE).write_bytes(npz)
        doc = outcome.document()
        doc["scoring"] |= {"scores_file": SCORES_FILE, "scores_sha256": hashlib.sha256(npz).hexdigest()}
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        (tmp / RESULTS_FILE).write_text(text, encoding="utf-8")
        for name in (DIAGRAM_FILE, SCORES_FILE, RESULTS_FILE):
            with (tmp / name).open("rb") as f:
                os.fsync(f.fileno())
        out.mkdir(parents=True, exist_ok=True)
        for name in (DIAGRAM_FILE, SCORES_FILE, RESULTS_FILE):  # the JSON last: it marks a complete set
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s, %s and %s", out / RESULTS_FILE, out / DIAGRAM_FILE, out / SCORES_FILE)
    return out / RESULTS_FILE, out / DIAGRAM_FILE, out / SCORES_FILE


def run_calibration(cfg: CalibrateCommandConfig, executor: ShardExecutor | None = None) -> CalibrationResult:
    """Score, calibrate and write the outputs into ``cfg.output_dir``; the Prefect task's call."""
    outcome = calibrate_gguf(cfg, executor)
    write_calibration(outcome, cfg.output_dir)
    return outcome.result


def load_calibration_results(path: str | Path) -> tuple[CalibrationResult, dict[str, Any]]:
    """Read ``calibration_results.json``: the result and its ``"scoring"`` block.

    Raises:
        DataError: Missing or invalid file.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        scoring = doc.pop("scoring", {})
        return CalibrationResult.model_validate(doc), scoring
    except FileNotFoundError:
        raise DataError(f"{p}: calibration results not found: run so8t calibrate first") from None
    except ValueError as e:
        raise DataError(f"{p}: not a valid calibration_results.json ({str(e).splitlines()[0]})") from None


def load_calibration_scores(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``scores.npz`` (a file, or the ``output_dir`` holding it).

    Returns:
        ``z`` ``(n, 3)`` float64 label scores (columns in ``labels`` order), ``y`` ``(n,)`` int64
        true label indices, ``fit_idx`` and ``holdout_idx`` (the split the calibration used),
        ``labels`` (the label order) and ``label_texts`` (their spellings in the prompt).

    Raises:
        DataError: Missing or unreadable file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SCORES_FILE
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{p}: calibration scores not found: run so8t calibrate first") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a valid scores.npz ({e})") from None


# ----------------------------------------------------------------------------- CLI
def _fmt(x: float | None, digits: int = 4) -> str:
    return "undefined" if x is None else f"{x:.{digits}f}"


def _tau(x: float) -> str:
    return "never" if x > 1.0 else f"{x:.4f}"


def summary_lines(outcome: CalibrationOutcome) -> list[str]:
    """Human summary of a calibration: parameters, held-out metrics, verdict."""
    r, s = outcome.result, outcome.scores
    b, a = r.before.holdout, r.after.holdout
    gate = r.config.gate
    lines = [
        f"calibrated {Path(r.model_path or '').name} on {Path(r.data_path or '').name}: {r.n_samples} samples "
        f"({r.n_fit} fit, {r.n_holdout} held out); scores: {s.mode} "
        + ("(from cache)" if s.from_cache else f"({s.seconds:.1f} s)"),
        f"  temperature        {r.before.temperature:g} -> {r.temperature:.4f}  ({r.temperature_fit.optimizer_used})",
        f"  tau_deny           {_tau(r.before.tau_deny)} -> {_tau(r.tau_deny)}",
        f"  tau_escalate       {_tau(r.before.tau_escalate)} -> {_tau(r.tau_escalate)}",
        "  held-out metrics   before -> after",
        f"    ECE              {_fmt(b.ece)} -> {_fmt(a.ece)}   (target <= {gate.ece_max})",
        f"    False Allow Rate {_fmt(b.false_allow_rate)} -> {_fmt(a.false_allow_rate)}   "
        f"({a.false_allow_count}/{a.false_allow_denominator} after; upper 95% bound {_fmt(a.false_allow_upper95)}; "
        f"target {gate.far_bound} <= {gate.far_max}, now {_fmt(gate.far_of(a))})",
        f"    macro F1         {_fmt(b.macro_f1)} -> {_fmt(a.macro_f1)}   (floor {gate.macro_f1_min})",
        f"    escalation rate  {_fmt(b.escalation_rate)} -> {_fmt(a.escalation_rate)}",
        f"    Brier            {_fmt(b.brier)} -> {_fmt(a.brier)}",
        f"  verdict: {'PASS' if r.passed else 'FAIL'}"
        + ("" if r.passed else f" (failing: {', '.join(r.verdict.failed)})"),
    ]
    if not r.passed:
        lines += [f"    - {c.reason}" for c in r.verdict.criteria if not c.passed]
    lines += [f"  warning: {w}" for w in r.warnings]
    return lines
