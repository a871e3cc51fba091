"""``so8t evaluate``: apply a calibrated GGUF model to labelled JSONL and report how its decisions hold.

Plain-Python twins of the command: :func:`evaluate` (checks every input, scores, computes the
metrics; writes nothing), :func:`write_evaluation` (``evaluation.json`` + ``evaluation.md``,
each atomically) and :func:`run_evaluation` (both).

**Scoring** is calibration's own: :func:`so8t.calibrate.scoring.score_gguf` (shared-prefix KV reuse, the
content-keyed score cache), one call per data file, with the decision prompt and scoring mode the
calibration used, so a file that was calibrated on is read back from the score cache. With
``--dask_workers N`` (or ``--dask_scheduler``) each file is scored in shards on one dask cluster
(:mod:`so8t.shards`), with the same scores and cache entries.

**Decisions**: ``p = softmax(z / T)``; DENY if ``p_DENY >= tau_deny``; else ALLOW if
``p_ALLOW >= tau_escalate``; else ESCALATE (:func:`so8t.calibrate.metrics.decide`), with ``T``, ``tau_deny``
and ``tau_escalate`` from ``calibration_results.json``.

**Which model**: ``--model`` is a GGUF file, or a registry reference ``NAME@REF`` (REF an alias
such as ``production`` or a version such as ``v3``). A reference resolves to the version's served
GGUF by the one served-GGUF rule (:func:`served_gguf`, which the smoke test uses too):
the manifest's ``parameters['main_gguf']``, else its first quantized GGUF (not ``*_f16`` /
``*_f32`` / ``*_bf16``), else its first GGUF. ``registry`` is importable from ``so8t``
(``tests/unit/test_layers.py`` only keeps Prefect out of ``so8t``); it is imported lazily, only
when a reference is given. The version's ``calibration/calibration_results.json`` and the
``decision_prompt.json`` beside its GGUF (``gguf/decision_prompt.json``) are the defaults for
``--calibration`` and ``--decision_prompt``; the blobs used are re-hashed before use.

**Metrics** (every group: a whole file, each source, each (source, category), each lang):
see :class:`GroupMetrics`. A rate whose denominator is empty is ``None`` (null in the JSON,
``n/a`` in the Markdown), never 0; ``undefined`` says why.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from so8t.calibrate.decision_rule import Calibration, load_calibration
from so8t.base_models import sha256_file
from so8t.decision import DEFAULT_DECISION_PROMPT, LABELS, PROMPT_FILE, DecisionPrompt, load_decision_prompt
from so8t.outpaths import check_output_dir
from so8t.errors import ConfigError, DataError, ModelError
from so8t.calibrate.metrics import ALLOW, DENY, ESCALATE, N_CLASSES, clopper_pearson_upper, confusion_matrix, decide, softmax
from so8t.shards import DASK_SCHEDULER_HELP, DASK_WORKERS_HELP, ShardExecutor, executor_context
from so8t.version_layout import LAYOUT

logger = logging.getLogger(__name__)

REPORT_JSON = "evaluation.json"
REPORT_MD = "evaluation.md"
CALIBRATION_FILE = "calibration_results.json"
#: Where a registry version keeps its calibration (``release/layout.py`` publishes it there).
VERSION_CALIBRATION = LAYOUT.calibration
DECISION_RULE = ("p = softmax(z / T); DENY if p_DENY >= tau_deny; else ALLOW if p_ALLOW >= tau_escalate; "
                 "else ESCALATE")

GroupKind = Literal["overall", "source", "source_category", "lang"]


# ----------------------------------------------------------------------------- configuration
class EvaluateConfig(BaseModel):
    """Evaluate a calibrated GGUF on labelled JSONL: how its ALLOW/ESCALATE/DENY decisions hold, per file,
    source, category and language."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str = Field(description="A GGUF file, or a registry reference NAME@REF with REF an alias or a version, "
                                   "e.g. so8t-smollm2@production or so8t-smollm2@v3 (its served GGUF).")
    data: str = Field(description="Labelled JSONL files, comma-separated: {\"text\", \"label\"} records (label "
                                  "ALLOW/ESCALATE/DENY) with optional \"source\", \"category\", \"lang\".")
    output_dir: str = Field(description="Where evaluation.json and evaluation.md are written (only after success).")
    calibration: str | None = Field(
        None, description="calibration_results.json of so8t calibrate (temperature, tau_deny, tau_escalate). "
        "Default: the registry version's calibration/calibration_results.json for NAME@REF, else "
        "calibration_results.json beside the GGUF.")
    decision_prompt: str | None = Field(
        None, description="JSON file {system, user_template} with the decision prompt (default: the registry "
        "version's gguf/decision_prompt.json for NAME@REF, else decision_prompt.json beside the GGUF, else the "
        "built-in prompt).")
    registry_root: str | None = Field(
        None, description="Registry root for NAME@REF models (default: $SO8T_REGISTRY, else ~/.cache/so8t/registry).")
    confidence: float = Field(0.95, gt=0, lt=1, description="One-sided confidence of the Clopper-Pearson upper "
                                                            "bound on the False Allow Rate.")
    scoring_mode: Literal["auto", "first-token", "sequence"] | None = Field(
        None, description="Label scores: 'auto', 'first-token' or 'sequence' (default: the mode the calibration "
        "scored with, from its 'scoring' block, else 'auto').")
    n_ctx: int = Field(2048, ge=16, description="llama.cpp context size; every prompt must fit.")
    n_threads: int = Field(0, ge=0, description="CPU threads for llama.cpp, prompt batches included (0: half the "
                                                "logical cores; with dask: each worker's thread count).")
    no_cache: bool = Field(False, description="Re-score even if cached scores exist (and do not write the cache).")
    dask_workers: int = Field(0, ge=0, description=DASK_WORKERS_HELP)
    dask_scheduler: str | None = Field(None, description=DASK_SCHEDULER_HELP)


# ----------------------------------------------------------------------------- report models
class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegistrySource(_Frozen):
    """Where a ``NAME@REF`` model came from."""

    root: str = Field(description="Registry root.")
    name: str = Field(description="Model name.")
    ref: str = Field(description="The reference as given (alias or version).")
    version: str = Field(description="The version it resolved to.")
    gguf_file: str = Field(description="The served GGUF's path inside the version.")
    calibration_file: str | None = Field(description="The version's calibration file, if it has one.")
    decision_prompt_file: str | None = Field(description="The version's decision prompt file, if it has one.")


class ModelInfo(_Frozen):
    """The evaluated model."""

    argument: str = Field(description="--model as given.")
    path: str = Field(description="The GGUF file scored (a blob path for registry models).")
    sha256: str = Field(description="sha256 of the GGUF.")
    registry: RegistrySource | None = Field(None, description="Set for NAME@REF models.")


class CalibrationInfo(_Frozen):
    """The calibration applied."""

    source: str = Field(description="The calibration file (a blob path for registry models).")
    sha256: str = Field(description="sha256 of the calibration file.")
    temperature: float = Field(description="T of p = softmax(z / T).")
    tau_deny: float = Field(description="DENY if p_DENY >= tau_deny (a value above 1 never fires).")
    tau_escalate: float = Field(description="Else ALLOW if p_ALLOW >= tau_escalate, else ESCALATE.")
    model_sha256: str | None = Field(None, description="The model the calibration was fitted on, if recorded.")
    data_sha256: str | None = Field(None, description="The data it was fitted on, if recorded.")
    scoring_mode: str | None = Field(None, description="The scoring mode it used, if recorded.")


class PromptInfo(_Frozen):
    """The decision prompt the records were scored with."""

    source: str = Field(description="The prompt file, or 'built-in'.")
    sha256: str = Field(description="DecisionPrompt.sha256() of the prompt.")


class FileScoring(_Frozen):
    """How one data file was scored."""

    mode: str = Field(description="'first-token' or 'sequence'.")
    from_cache: bool = Field(description="True when the scores were read from the score cache (no model call).")
    seconds: float = Field(description="Scoring wall time (of the original scoring run on a cache hit).")
    decisions_per_second: float | None = Field(
        description="Records scored per scoring second: this run's rate, or on a cache hit the original scoring "
                    "run's rate (None when that is unknown).")
    rate_note: str = Field(description="Where decisions_per_second comes from.")
    wall_seconds: float = Field(description="Wall time of this run's scoring call (a cache read on a hit).")
    n_prefix_tokens: int = Field(description="Prompt tokens shared by every record, evaluated once.")
    label_token_ids: dict[str, list[int]] = Field(description="Token ids of each label after the prompt.")
    cache_key: str = Field(description="Key of the score cache entry.")
    records_sha256: str = Field(description="sha256 of the records' canonical JSON.")


class GroupMetrics(_Frozen):
    """How the decisions hold on one group of records.

    Definitions (``y`` true labels, ``d`` decisions):

    - False Allow Rate: ``#(d = ALLOW, y != ALLOW) / #(y != ALLOW)``; upper bound: one-sided
      Clopper-Pearson at the report's ``confidence`` (``so8t.calibrate.metrics.clopper_pearson_upper``).
    - over-refusal: ``#(y = ALLOW, d != ALLOW) / #(y = ALLOW)`` (escalated or denied).
    - false-deny rate: ``#(y = ALLOW, d = DENY) / #(y = ALLOW)``.
    - escalation rate: ``#(d = ESCALATE) / n``; accuracy: ``#(d = y) / n``.
    - F1 of a label: ``2 TP / (2 TP + FP + FN)``. Macro F1 is the unweighted mean over the labels that
      occur in the group's true labels or decisions (``macro_f1_labels``); a label absent from both
      (its F1 would be 0/0) is left out and its ``f1_per_class`` entry is None; a label that occurs
      on one side only has F1 0. This equals ``sklearn.metrics.f1_score(y, d, average='macro',
      zero_division=0)`` with its default labels. (Calibration's macro F1 averages over all three
      labels; the two agree whenever every label occurs, as in calibration data.)
    - confusion matrix: rows true label, columns decision, both in ``labels`` order.

    A rate with an empty denominator is None and ``undefined`` names why.
    """

    group: str = Field(description="Display name: 'overall', 'source=X', 'X / Y' (source / category), 'lang=Z'.")
    kind: GroupKind = Field(description="Which grouping the row belongs to.")
    source: str | None = Field(None, description="The group's source (None: records without one).")
    category: str | None = Field(None, description="The group's category (source_category groups).")
    lang: str | None = Field(None, description="The group's language (lang groups).")
    n: int = Field(description="Records in the group.")
    label_counts: dict[str, int] = Field(description="Records per true label.")
    decision_counts: dict[str, int] = Field(description="Records per decision.")
    false_allow_count: int = Field(description="Decided ALLOW while the true label is not ALLOW.")
    false_allow_denominator: int = Field(description="Records whose true label is not ALLOW.")
    false_allow_rate: float | None = Field(description="false_allow_count / denominator; None when it is 0.")
    false_allow_upper: float | None = Field(description="One-sided Clopper-Pearson upper bound at `confidence`.")
    over_refusal_count: int = Field(description="True ALLOW decided ESCALATE or DENY.")
    over_refusal_denominator: int = Field(description="Records whose true label is ALLOW.")
    over_refusal_rate: float | None = Field(description="over_refusal_count / denominator; None when it is 0.")
    false_deny_count: int = Field(description="True ALLOW decided DENY.")
    false_deny_rate: float | None = Field(description="false_deny_count / true ALLOW; None when there is no ALLOW.")
    escalation_count: int = Field(description="Records decided ESCALATE.")
    escalation_rate: float = Field(description="escalation_count / n.")
    accuracy: float = Field(description="Fraction of decisions equal to the true label.")
    macro_f1: float = Field(description="Mean F1 over macro_f1_labels (see the class docstring).")
    macro_f1_labels: list[str] = Field(description="Labels present in the true labels or the decisions.")
    f1_per_class: dict[str, float | None] = Field(description="F1 per label; None for a label absent from both.")
    confusion_matrix: list[list[int]] = Field(description="Rows true label, columns decision (LABELS order).")
    undefined: dict[str, str] = Field(default_factory=dict, description="Metric -> why it is None.")


class FileReport(_Frozen):
    """One data file: where it is, how it was scored, its groups (overall first)."""

    path: str = Field(description="The data file (absolute).")
    sha256: str = Field(description="sha256 of the file.")
    n: int = Field(description="Records in the file.")
    scoring: FileScoring
    groups: list[GroupMetrics] = Field(description="overall, then per source, per (source, category), per lang.")

    @property
    def overall(self) -> GroupMetrics:
        return self.groups[0]


class EvaluationReport(_Frozen):
    """Everything ``so8t evaluate`` found (``evaluation.json``)."""

    created_at: str = Field(description="When the evaluation finished (local time, ISO 8601).")
    config: EvaluateConfig
    labels: tuple[str, str, str] = Field(default=LABELS, description="Order of every count vector and matrix.")
    decision_rule: str = Field(default=DECISION_RULE, description="How scores become decisions.")
    confidence: float = Field(description="Confidence of false_allow_upper.")
    model: ModelInfo
    calibration: CalibrationInfo
    decision_prompt: PromptInfo
    files: list[FileReport]
    warnings: list[str] = Field(default_factory=list, description="Things to know before trusting the numbers.")
    seconds: float = Field(description="Wall time of the whole evaluation.")
    versions: dict[str, str] = Field(description="Versions of the software involved.")

    def to_markdown(self) -> str:
        """The report as GitHub-flavoured Markdown."""
        return render_markdown(self)


# ----------------------------------------------------------------------------- model resolution
def parse_registry_reference(value: str) -> tuple[str, str] | None:
    """``(name, ref)`` when ``value`` is a registry reference ``NAME@REF``, None when it is a file path.

    An existing path, anything with a path separator and anything ending in ``.gguf`` is a file.

    Raises:
        ConfigError: ``NAME@`` or ``@REF`` with an empty side.
    """
    if "@" not in value or "/" in value or os.sep in value or value.lower().endswith(".gguf"):
        return None
    if Path(value).expanduser().exists():
        return None
    name, _, ref = value.partition("@")
    if not name or not ref:
        raise ConfigError(f"--model {value!r}: a registry reference is NAME@REF with REF an alias or a version, "
                          "e.g. so8t-smollm2@production or so8t-smollm2@v3")
    return name, ref


def served_gguf(manifest: Any) -> str:
    """Path inside a registry version of the GGUF it serves.

    The one rule for every stage (the smoke test's ``release.smoke.main_gguf`` calls it):
    ``parameters['main_gguf']`` when set, else the first quantized GGUF (not ``*_f16.gguf``,
    ``*_f32.gguf`` or ``*_bf16.gguf``), else the first GGUF, in manifest order.

    Raises:
        ModelError: The version holds no GGUF, or ``main_gguf`` names a file it does not hold.
    """
    files = [f.path for f in manifest.files]
    main = manifest.parameters.get("main_gguf")
    if isinstance(main, str):
        if main not in files:
            raise ModelError(f"{manifest.name} {manifest.version}: parameters['main_gguf'] is {main!r}, which the "
                             f"version does not hold (files: {files}): pass the GGUF file with --model")
        return main
    ggufs = [f.path for f in manifest.files if f.kind.value == "gguf"]
    if not ggufs:
        raise ModelError(f"{manifest.name} {manifest.version} holds no GGUF file: pass a GGUF file with --model")
    quantized = [g for g in ggufs if not g.lower().endswith(("_f16.gguf", "_f32.gguf", "_bf16.gguf"))]
    return (quantized or ggufs)[0]


@dataclass(frozen=True)
class ResolvedModel:
    """The GGUF to score and the calibration / prompt files that come with it (None: none found)."""

    gguf: Path
    calibration: Path | None
    decision_prompt: Path | None
    registry: RegistrySource | None = None
    #: The GGUF's sha256 when already known (a registry blob, re-hashed while resolving); None: not computed.
    gguf_sha256: str | None = None


def resolve_registry_model(name: str, ref: str, root: str | None) -> ResolvedModel:
    """Resolve ``NAME@REF`` in a registry: served GGUF, calibration and prompt, their blobs re-hashed.

    Raises:
        ModelError: Unknown model, version or alias; no GGUF; a blob missing or corrupt.
    """
    from registry import Registry, RegistryError

    reg = Registry(root)
    spec = f"--model {name}@{ref}"
    try:
        models = reg.list_models()
        if name not in models:
            held = ", ".join(models) if models else "none"
            raise ModelError(f"{spec}: model {name!r} not found in registry {reg.root} (models: {held}): check the "
                             "name (so8t registry list) or pass --registry_root")
        manifest = reg.manifest(name, ref)
        entries = {f.path: f for f in manifest.files}
        gguf_rel = served_gguf(manifest)
        cal_rel = VERSION_CALIBRATION if VERSION_CALIBRATION in entries else None
        prompt_rel = next((p for p in (str(PurePosixPath(gguf_rel).parent / PROMPT_FILE), LAYOUT.decision_prompt)
                           if p in entries), None)
        paths: dict[str, Path] = {}
        for rel in (gguf_rel, cal_rel, prompt_rel):
            if rel is not None:
                reg.blobs.verify(entries[rel].sha256, entries[rel].size)
                paths[rel] = reg.blobs.path(entries[rel].sha256)
    except RegistryError as e:
        raise ModelError(f"{spec}: {e}") from None
    except ModelError as e:
        raise ModelError(str(e) if str(e).startswith(spec) else f"{spec}: {e}") from None
    source = RegistrySource(root=str(reg.root), name=name, ref=ref, version=manifest.version, gguf_file=gguf_rel,
                            calibration_file=cal_rel, decision_prompt_file=prompt_rel)
    logger.info("%s@%s is %s, serving %s", name, ref, manifest.version, gguf_rel)
    return ResolvedModel(gguf=paths[gguf_rel], calibration=paths.get(cal_rel) if cal_rel else None,
                         decision_prompt=paths.get(prompt_rel) if prompt_rel else None, registry=source,
                         gguf_sha256=entries[gguf_rel].sha256)


def resolve_model(model: str, registry_root: str | None) -> ResolvedModel:
    """A GGUF file (with ``calibration_results.json`` / ``decision_prompt.json`` beside it) or ``NAME@REF``.

    Raises:
        ModelError: Missing, unreadable or non-GGUF file; unknown registry model, version or alias.
    """
    from so8t.calibrate.scoring import check_gguf

    ref = parse_registry_reference(model)
    resolved = resolve_registry_model(*ref, registry_root) if ref else None
    if resolved is None:
        gguf = check_gguf(model)
        cal, prompt = gguf.parent / CALIBRATION_FILE, gguf.parent / PROMPT_FILE
        resolved = ResolvedModel(gguf=gguf, calibration=cal if cal.is_file() else None,
                                 decision_prompt=prompt if prompt.is_file() else None)
    else:
        check_gguf(resolved.gguf)
    return resolved


# ----------------------------------------------------------------------------- input checks
def data_paths(spec: str) -> list[Path]:
    """The files of a comma-separated ``--data`` value (each must exist, none twice).

    Raises:
        ConfigError: An empty entry or a file listed twice.
        DataError: A file that does not exist.
    """
    parts = [s.strip() for s in spec.split(",")]
    if not spec.strip() or any(not s for s in parts):
        raise ConfigError(f"--data {spec!r}: empty file name in the list: pass JSONL files separated by commas")
    paths, seen = [], set()
    for s in parts:
        p = Path(s).expanduser()
        if not p.exists():
            raise DataError(f"{p}: data file not found (--data): pass labelled JSONL files of {{\"text\", \"label\"}} "
                            "records")
        if not p.is_file():
            raise DataError(f"{p}: is not a file (--data): pass labelled JSONL files")
        key = p.resolve()
        if key in seen:
            raise ConfigError(f"--data: {p} is listed twice: pass each file once")
        seen.add(key)
        paths.append(p)
    return paths


@dataclass(frozen=True)
class CalibratedModel:
    """A GGUF with the calibration and decision prompt that go with it (checked, not loaded)."""

    model: ResolvedModel
    calibration: Calibration
    calibration_doc: dict[str, Any]
    calibration_sha256: str
    prompt: DecisionPrompt
    prompt_source: str


@dataclass(frozen=True)
class EvalInputs(CalibratedModel):
    """Every checked input of an evaluation: the calibrated model, the data, the output directory."""

    data: list[tuple[Path, list[Any]]]
    output_dir: Path


def resolve_calibrated(model: str, calibration: str | None = None, decision_prompt: str | None = None,
                       registry_root: str | None = None) -> CalibratedModel:
    """``--model`` (a GGUF file or ``NAME@REF``) with its calibration and decision prompt: the given files,
    else the registry version's, else those beside the GGUF (the prompt: else the built-in one).

    The one resolution rule of ``so8t evaluate``, ``so8t decide`` and ``so8t serve``.

    Raises:
        ConfigError / ModelError / DataError: one line naming the flag or file.
    """
    resolved = resolve_model(model, registry_root)
    if calibration is not None:
        cal_path = Path(calibration).expanduser()
    elif resolved.calibration is not None:
        cal_path = resolved.calibration
    elif resolved.registry is not None:
        r = resolved.registry
        raise ConfigError(f"--calibration: {r.name} {r.version} holds no {VERSION_CALIBRATION}: pass --calibration "
                          "PATH (the calibration_results.json of so8t calibrate)")
    else:
        raise ConfigError(f"--calibration: no {CALIBRATION_FILE} beside {resolved.gguf}: pass --calibration PATH (the "
                          "calibration_results.json of so8t calibrate)")
    if cal_path.is_dir():
        cal_path = cal_path / CALIBRATION_FILE
    if not cal_path.is_file():
        raise DataError(f"{cal_path}: calibration file not found (--calibration): pass the calibration_results.json "
                        "that so8t calibrate wrote")
    cal = load_calibration(cal_path)
    doc = json.loads(cal_path.read_text(encoding="utf-8"))  # valid: load_calibration read it
    if decision_prompt is not None:
        prompt, prompt_source = load_decision_prompt(decision_prompt), str(Path(decision_prompt).expanduser())
    elif resolved.decision_prompt is not None:
        prompt, prompt_source = load_decision_prompt(resolved.decision_prompt), str(resolved.decision_prompt)
    else:
        prompt, prompt_source = DEFAULT_DECISION_PROMPT, "built-in"
    return CalibratedModel(model=resolved, calibration=cal, calibration_doc=doc, calibration_sha256=sha256_file(cal_path),
                           prompt=prompt, prompt_source=prompt_source)


def check_inputs(cfg: EvaluateConfig) -> EvalInputs:
    """Check every input before anything is scored or written.

    Raises:
        ConfigError / ModelError / DataError: one line naming the flag, file, line or field.
    """
    from so8t.calibrate.scoring import read_labelled_records

    out = check_output_dir(cfg.output_dir)
    c = resolve_calibrated(cfg.model, cfg.calibration, cfg.decision_prompt, cfg.registry_root)
    data = [(p, read_labelled_records(p)) for p in data_paths(cfg.data)]
    return EvalInputs(**{f.name: getattr(c, f.name) for f in fields(c)}, data=data, output_dir=out)


# ----------------------------------------------------------------------------- metrics
def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def group_metrics(y: np.ndarray, d: np.ndarray, confidence: float, *, group: str = "overall",
                  kind: GroupKind = "overall", source: str | None = None, category: str | None = None,
                  lang: str | None = None) -> GroupMetrics:
    """Every decision metric of one group (definitions: :class:`GroupMetrics`).

    Args:
        y: True label indices ``(n,)`` into ``LABELS``, ``n >= 1``.
        d: Decision indices ``(n,)``.
        confidence: One-sided confidence of the Clopper-Pearson bound.
    """
    y, d = np.asarray(y, dtype=np.int64), np.asarray(d, dtype=np.int64)
    n = int(y.shape[0])
    cm = confusion_matrix(y, d)  # rows true label, columns decision
    neg = int(cm[ALLOW + 1:].sum())
    fa = int(cm[ALLOW + 1:, ALLOW].sum())
    pos = int(cm[ALLOW].sum())
    over, fd = int(pos - cm[ALLOW, ALLOW]), int(cm[ALLOW, DENY])
    undefined: dict[str, str] = {}
    if not neg:
        why = "no record with a true label other than ALLOW"
        undefined |= {"false_allow_rate": why, "false_allow_upper": why}
    if not pos:
        why = "no record with true label ALLOW"
        undefined |= {"over_refusal_rate": why, "false_deny_rate": why}
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # predicted + support = 2TP + FP + FN
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros(N_CLASSES), where=present)
    return GroupMetrics(
        group=group, kind=kind, source=source, category=category, lang=lang, n=n,
        label_counts={lab: int(c) for lab, c in zip(LABELS, cm.sum(axis=1))},
        decision_counts={lab: int(c) for lab, c in zip(LABELS, cm.sum(axis=0))},
        false_allow_count=fa, false_allow_denominator=neg, false_allow_rate=_rate(fa, neg),
        false_allow_upper=clopper_pearson_upper(fa, neg, confidence),
        over_refusal_count=over, over_refusal_denominator=pos, over_refusal_rate=_rate(over, pos),
        false_deny_count=fd, false_deny_rate=_rate(fd, pos),
        escalation_count=int(cm[:, ESCALATE].sum()), escalation_rate=float(cm[:, ESCALATE].sum() / n),
        accuracy=float(np.trace(cm) / n), macro_f1=float(f1[present].mean()),
        macro_f1_labels=[lab for lab, p in zip(LABELS, present) if p],
        f1_per_class={lab: (float(v) if p else None) for lab, v, p in zip(LABELS, f1, present)},
        confusion_matrix=cm.tolist(), undefined=undefined,
    )


def _name(v: str | None, what: str) -> str:
    return v if v is not None else f"(no {what})"


def file_groups(records: Sequence[Any], y: np.ndarray, d: np.ndarray, confidence: float) -> list[GroupMetrics]:
    """Overall, then per source, per (source, category), per lang: each grouping only when some record
    carries the field (records without it form a ``(no source)`` / ``(no category)`` / ``(no lang)`` group).
    Groups are sorted by name, the missing-value group last."""
    groups = [group_metrics(y, d, confidence)]
    src = [r.source for r in records]
    cat = [r.category for r in records]
    lang = [r.lang for r in records]

    def order(key):  # None last
        return tuple((v is None, v or "") for v in (key if isinstance(key, tuple) else (key,)))

    def add(keys: list, kind: GroupKind, make) -> None:
        for key in sorted(set(keys), key=order):
            idx = np.array([i for i, k in enumerate(keys) if k == key], dtype=np.int64)
            groups.append(group_metrics(y[idx], d[idx], confidence, kind=kind, **make(key)))

    if any(s is not None for s in src):
        add(src, "source", lambda s: dict(group=f"source={_name(s, 'source')}", source=s))
    if any(c is not None for c in cat):
        add(list(zip(src, cat)), "source_category",
            lambda k: dict(group=f"{_name(k[0], 'source')} / {_name(k[1], 'category')}", source=k[0], category=k[1]))
    if any(v is not None for v in lang):
        add(lang, "lang", lambda v: dict(group=f"lang={_name(v, 'lang')}", lang=v))
    return groups


# ----------------------------------------------------------------------------- evaluation
def _versions() -> dict[str, str]:
    import scipy

    import so8t

    out = {"so8t": so8t.__version__, "python": platform.python_version(), "numpy": np.__version__,
           "scipy": scipy.__version__}
    try:
        import llama_cpp

        out["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    return out


def _score(cfg: EvaluateConfig, inputs: EvalInputs, path: Path, records: list[Any],
           executor: ShardExecutor | None = None) -> tuple[Any, float]:
    """Scores of one file, the way calibration scored (its mode unless --scoring_mode), and the call's wall time."""
    from so8t.calibrate.scoring import score_gguf

    texts, labels = [r.text for r in records], [r.label for r in records]
    recorded = (inputs.calibration_doc.get("scoring") or {}).get("mode")
    recorded = recorded if recorded in ("first-token", "sequence") else None
    mode = cfg.scoring_mode or "auto"  # auto first: its cache key is the one so8t calibrate (default auto) wrote
    kwargs = dict(n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, use_cache=not cfg.no_cache,
                  data_sha256=sha256_file(path), prompt=inputs.prompt, executor=executor)
    t0 = time.monotonic()
    scores = score_gguf(inputs.model.gguf, texts, labels, mode=mode, **kwargs)
    if cfg.scoring_mode is None and recorded is not None and scores.mode != recorded:
        logger.info("auto scoring gave %s but the calibration scored with %s: re-scoring %s", scores.mode, recorded,
                    path)
        t0 = time.monotonic()
        scores = score_gguf(inputs.model.gguf, texts, labels, mode=recorded, **kwargs)
    return scores, time.monotonic() - t0


def evaluate(cfg: EvaluateConfig, executor: ShardExecutor | None = None) -> EvaluationReport:
    """Check every input, score each data file, decide, and compute the metrics. Writes nothing.

    Args:
        cfg: The settings.
        executor: Score each file in shards on these workers (:mod:`so8t.shards`); None: the plain dask
            cluster ``cfg.dask_workers`` / ``cfg.dask_scheduler`` ask for (one for every file), else in this process.

    Raises:
        ConfigError, ModelError, DataError: bad input, before any scoring (one line each).
    """
    t_start = time.monotonic()
    inputs = check_inputs(cfg)
    cal, doc = inputs.calibration, inputs.calibration_doc
    scoring_doc = doc.get("scoring") if isinstance(doc.get("scoring"), dict) else {}
    warnings: list[str] = []
    files: list[FileReport] = []
    model_sha = None
    with executor_context(executor, cfg.dask_workers, cfg.dask_scheduler) as ex:
        scored = [(path, records, *_score(cfg, inputs, path, records, ex)) for path, records in inputs.data]
    for path, records, scores, wall in scored:
        model_sha = scores.model_sha256
        p = softmax(scores.z, cal.temperature)  # (n, 3)
        d = decide(p, cal.tau_deny, cal.tau_escalate)
        n = len(records)
        rate = n / scores.seconds if scores.seconds > 0 else None
        note = ("cache hit: the rate of the original scoring run" if scores.from_cache
                else "measured in this run (whole score_gguf call: model load, hashing, rendering, evaluation)")
        if scores.from_cache and rate is None:
            note = "cache hit: the original scoring rate is unknown"
        scoring = FileScoring(
            mode=scores.mode, from_cache=scores.from_cache, seconds=float(scores.seconds), decisions_per_second=rate,
            rate_note=note, wall_seconds=wall, n_prefix_tokens=scores.n_prefix_tokens,
            label_token_ids=scores.label_token_ids, cache_key=scores.cache_key, records_sha256=scores.records_sha256,
        )
        files.append(FileReport(path=str(path.resolve()), sha256=scores.data_sha256, n=n, scoring=scoring,
                                groups=file_groups(records, scores.y, d, cfg.confidence)))
        if doc.get("data_sha256") == scores.data_sha256:
            warnings.append(f"{path.name} is the data the calibration was fitted on: its numbers are in-sample")
        if scoring_doc.get("mode") in ("first-token", "sequence") and scoring_doc["mode"] != scores.mode:
            warnings.append(f"{path.name} scored in {scores.mode} mode, the calibration in {scoring_doc['mode']} mode "
                            "(--scoring_mode): its thresholds apply to other scores")
    if doc.get("model_sha256") and model_sha and doc["model_sha256"] != model_sha:
        warnings.append(f"the calibration was fitted on another model (sha256 {doc['model_sha256'][:12]}, evaluated "
                        f"{model_sha[:12]}): its temperature and thresholds may not fit this model")
    recorded_prompt = scoring_doc.get("decision_prompt_sha256")
    if recorded_prompt and recorded_prompt != inputs.prompt.sha256():
        warnings.append(f"the calibration scored with another decision prompt (sha256 {recorded_prompt[:12]}) than "
                        f"this evaluation ({inputs.prompt.sha256()[:12]}, {inputs.prompt_source})")
    for w in warnings:
        logger.warning("%s", w)
    m = inputs.model
    return EvaluationReport(
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), config=cfg, confidence=cfg.confidence,
        model=ModelInfo(argument=cfg.model, path=str(m.gguf.resolve()), sha256=str(model_sha), registry=m.registry),
        calibration=CalibrationInfo(
            source=cal.source, sha256=inputs.calibration_sha256, temperature=cal.temperature, tau_deny=cal.tau_deny,
            tau_escalate=cal.tau_escalate,
            model_sha256=doc.get("model_sha256") if isinstance(doc.get("model_sha256"), str) else None,
            data_sha256=doc.get("data_sha256") if isinstance(doc.get("data_sha256"), str) else None,
            scoring_mode=scoring_doc.get("mode") if isinstance(scoring_doc.get("mode"), str) else None),
        decision_prompt=PromptInfo(source=inputs.prompt_source, sha256=inputs.prompt.sha256()),
        files=files, warnings=warnings, seconds=time.monotonic() - t_start, versions=_versions(),
    )


def write_evaluation(report: EvaluationReport, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``evaluation.md`` then ``evaluation.json`` (each atomically: temp file + fsync + rename).

    Returns:
        The JSON and Markdown paths.
    """
    from so8t.atomic import atomic_write_bytes

    out = check_output_dir(output_dir)
    md, js = out / REPORT_MD, out / REPORT_JSON
    atomic_write_bytes(md, report.to_markdown().encode("utf-8"))
    atomic_write_bytes(js, (report.model_dump_json(indent=2) + "\n").encode("utf-8"))
    logger.info("wrote %s and %s", js, md)
    return js, md


def run_evaluation(cfg: EvaluateConfig, executor: ShardExecutor | None = None) -> EvaluationReport:
    """:func:`evaluate`, then :func:`write_evaluation` into ``cfg.output_dir``."""
    report = evaluate(cfg, executor)
    write_evaluation(report, cfg.output_dir)
    return report


def read_evaluation(path: str | Path) -> EvaluationReport:
    """Load an ``evaluation.json`` (a file, or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    return EvaluationReport.model_validate_json(p.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- text
def _f(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _tau(x: float) -> str:
    return "never" if x > 1.0 else f"{x:.4g}"


def _dps(s: FileScoring) -> str:
    if s.decisions_per_second is None:
        return "decisions/s unknown (cache hit)" if s.from_cache else "decisions/s n/a"
    return f"{s.decisions_per_second:.1f} decisions/s" + (" (cache hit: original scoring rate)" if s.from_cache else "")


def summary_lines(report: EvaluationReport) -> list[str]:
    """One line per file: n, FAR [upper], over-refusal, macro F1, decisions/s."""
    pct = f"{report.confidence:.0%}"
    lines = []
    for f in report.files:
        g = f.overall
        lines.append(
            f"{Path(f.path).name}: n={g.n}, FAR {_f(g.false_allow_rate)} ({g.false_allow_count}/"
            f"{g.false_allow_denominator}) [upper {pct} {_f(g.false_allow_upper)}], over-refusal "
            f"{_f(g.over_refusal_rate)}, macro F1 {_f(g.macro_f1)}, {_dps(f.scoring)}")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(r: EvaluationReport) -> str:
    """The report as GitHub-flavoured Markdown: setup, one table per file (overall first), confusion matrix."""
    pct = f"{r.confidence:.0%}"
    c = r.calibration
    model = f"`{r.model.argument}`"
    if r.model.registry is not None:
        reg = r.model.registry
        model += f" = {reg.name} {reg.version} `{reg.gguf_file}` (registry {reg.root})"
    L = [f"# Evaluation of {_cell(Path(r.model.argument).name)}", "",
         f"- Model: {model}, sha256 `{r.model.sha256}`",
         f"- Calibration: `{c.source}` (sha256 `{c.sha256[:16]}`): T = {c.temperature:.4g}, tau_deny = "
         f"{_tau(c.tau_deny)}, tau_escalate = {_tau(c.tau_escalate)}",
         f"- Decision rule: {r.decision_rule}.",
         f"- Decision prompt: {r.decision_prompt.source} (sha256 `{r.decision_prompt.sha256[:16]}`)",
         f"- Data: {', '.join(f'`{Path(f.path).name}` ({f.n})' for f in r.files)}", ""]
    if r.warnings:
        L += ["**Warnings**", "", *[f"- {w}" for w in r.warnings], ""]
    L += ["FAR: false-allow rate, decided ALLOW over true not-ALLOW, with its one-sided "
          f"{pct} Clopper-Pearson upper bound. Over-refusal: true ALLOW decided ESCALATE or DENY, over true ALLOW. "
          "False-deny: true ALLOW decided DENY, over true ALLOW. Escalation: decided ESCALATE over all. Macro F1: "
          "mean F1 over the labels present in the group's true labels or decisions. n/a: undefined (empty "
          "denominator).", ""]
    for f in r.files:
        s = f.scoring
        L += [f"## {_cell(Path(f.path).name)}", "",
              f"`{f.path}` (sha256 `{f.sha256[:16]}`), {f.n} records; scored in {s.mode} mode, "
              + (f"from the score cache; {_dps(s)}." if s.from_cache else f"{s.seconds:.2f} s, {_dps(s)}."), "",
              "| group | n | ALLOW / ESCALATE / DENY | FAR [upper] | over-refusal | false-deny | escalation | "
              "accuracy | macro F1 |",
              "|---|---:|---|---|---|---|---:|---:|---:|"]
        for g in f.groups:
            counts = " / ".join(str(g.label_counts[lab]) for lab in LABELS)
            far = (f"{_f(g.false_allow_rate)} ({g.false_allow_count}/{g.false_allow_denominator}) "
                   f"[{_f(g.false_allow_upper)}]" if g.false_allow_denominator else "n/a")
            orr = (f"{_f(g.over_refusal_rate)} ({g.over_refusal_count}/{g.over_refusal_denominator})"
                   if g.over_refusal_denominator else "n/a")
            fdr = (f"{_f(g.false_deny_rate)} ({g.false_deny_count}/{g.over_refusal_denominator})"
                   if g.over_refusal_denominator else "n/a")
            name = f"**{g.group}**" if g.kind == "overall" else _cell(g.group)
            L.append(f"| {name} | {g.n} | {counts} | {far} | {orr} | {fdr} | {g.escalation_rate:.3f} | "
                     f"{g.accuracy:.3f} | {g.macro_f1:.3f} |")
        g = f.overall
        L += ["", "Confusion matrix (overall; rows true label, columns decision):", "",
              "| true \\ decided | " + " | ".join(LABELS) + " |", "|---|" + "---:|" * len(LABELS)]
        L += [f"| {lab} | " + " | ".join(str(v) for v in row) + " |" for lab, row in zip(LABELS, g.confusion_matrix)]
        L.append("")
    vers = ", ".join(f"{k} {v}" for k, v in r.versions.items())
    L += ["---", f"Made {r.created_at} in {r.seconds:.1f} s. Versions: {vers}.", ""]
    return "\n".join(L)
