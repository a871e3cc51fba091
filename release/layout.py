"""Planning a run's directories and assembling registry versions from stage outputs.

Plain functions (no Prefect in them): the flows and the benchmark's plain-Python twin call the
same code. They are not tasks of their own: each is milliseconds of work, and a task run costs
more than that in state round trips (see BENCHMARKS.md, Orchestration).

- :func:`plan_run`: the run directory ``<work_dir>/<model>-<digest>``, where the digest covers the
  settings and the content of the data and base model. Same inputs, same directory: a re-run
  resumes and hits the stage caches there; new data gets a fresh directory, so training never
  resumes another run's checkpoints.
- :func:`candidate_files` / :func:`calibrated_files`: a version's files, in the one layout
  :data:`so8t.version_layout.LAYOUT` owns.
"""

from __future__ import annotations

import hashlib
import math
import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from registry import Registry, VersionManifest
from so8t.export.bake import BakeConfig
from so8t.decision import PROMPT_FILE
from so8t.export.gguf import ConversionResult, ConvertConfig, run_conversion
from so8t.serving.inference import write_modelfile
from so8t.digests import maybe_path, path_digest, split_paths
from so8t.training.runs import TrainResult
from so8t.version_layout import LAYOUT



class RunPlan(BaseModel):
    """Directories and stage configs of one retrain run."""

    run_dir: str
    digest: str
    train_dir: str
    baked_dir: str
    gguf_dir: str
    gguf_name: str
    dataset_hashes: dict[str, str]
    base_model: str


def plan_run(model_name: str, work_dir: str, train: BaseModel, convert: BaseModel) -> RunPlan:
    """Digest the inputs (settings, data and base model content) into a run directory."""
    data = {Path(f).name: path_digest(f) for f in split_paths(train.dataset)}  # type: ignore[attr-defined]
    base = maybe_path(train.base_model)  # type: ignore[attr-defined]
    h = hashlib.sha256(json.dumps({"train": train.model_dump(mode="json"), "convert": convert.model_dump(mode="json"),
                                   "data": data, "base": path_digest(base) if base else train.base_model},  # type: ignore[attr-defined]
                                  sort_keys=True).encode())
    digest = h.hexdigest()[:12]
    run = Path(work_dir).expanduser().resolve() / f"{model_name}-{digest}"
    stem = model_name.replace(".", "_")
    return RunPlan(run_dir=str(run), digest=digest, train_dir=str(run / "train"), baked_dir=str(run / "baked"),
                   gguf_dir=str(run / "gguf"), gguf_name=stem, dataset_hashes=data,
                   base_model=train.base_model)  # type: ignore[attr-defined]


def bake_config(plan: RunPlan, trained: TrainResult) -> BakeConfig:
    return BakeConfig(model_path=trained.output_dir, output_path=plan.baked_dir, overwrite=True)


def convert_config(plan: RunPlan, convert: BaseModel) -> ConvertConfig:
    return ConvertConfig(model_dir=plan.baked_dir, out_dir=plan.gguf_dir, quants=tuple(convert.quants),  # type: ignore[attr-defined]
                         name=plan.gguf_name, fidelity=convert.fidelity)  # type: ignore[attr-defined]


def version_kinds(files: dict[str, str]) -> dict[str, str]:
    """Kinds of a version's files that their names alone would not give (see registry.models.infer_kind)."""
    return {rel: kind for rel in files if (kind := LAYOUT.kind(rel)) is not None}


def candidate_files(plan: RunPlan, trained: TrainResult, ggufs: ConversionResult, publish_f16: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Files of a candidate version (relative path -> source, in :data:`so8t.version_layout.LAYOUT`) and their kinds."""
    tdir, gdir = Path(trained.output_dir), Path(ggufs.out_dir)
    files: dict[str, str] = {LAYOUT.gguf(Path(p).name): p for p in ggufs.quant_paths.values()}
    if publish_f16:
        files[LAYOUT.gguf(Path(ggufs.f16_path).name)] = ggufs.f16_path
    files[LAYOUT.modelfile] = str(gdir / "Modelfile")
    if (gdir / PROMPT_FILE).is_file():  # next to the GGUF: calibration of the exported version reads it there
        files[LAYOUT.decision_prompt] = str(gdir / PROMPT_FILE)
    files[LAYOUT.report("gguf_report.json")] = ggufs.report_path
    files[LAYOUT.report("bake_report.json")] = str(Path(plan.baked_dir) / "bake_report.json")
    for name in ("so8t_train_config.json", "loss_log.jsonl", "so8t_oom_remedies.json"):
        if (tdir / name).is_file():
            files[LAYOUT.report(name)] = str(tdir / name)
    for name in ("adapter_model.safetensors", "adapter_config.json", "so8t_gates.safetensors"):
        files[LAYOUT.adapter(name)] = str(tdir / name)
    return files, version_kinds(files)


def candidate_metrics(trained: TrainResult, ggufs: ConversionResult, quant: str) -> dict[str, float]:
    from so8t.export.gguf import normalize_quant

    out: dict[str, float] = {"train_steps": float(trained.global_step)}
    if trained.last_ce_loss is not None:
        out["train_ce_loss"] = float(trained.last_ce_loss)
    main = next((f for f in ggufs.files if f.quant == normalize_quant(quant)), None)
    if main is not None and main.fidelity is not None:
        out["gguf_mean_kl"] = main.fidelity.mean_kl
        out["gguf_top1_agreement"] = main.fidelity.top1_agreement
    return {k: v for k, v in out.items() if math.isfinite(v)}  # the registry stores JSON: no NaN


class Staged(BaseModel):
    """A registry version exported to a plain directory (hard links)."""

    version: str
    dir: str
    files: dict[str, str]


def export_version(root: str | None, name: str, version: str, dest: str) -> Staged:
    """Hard-link ``version``'s files into ``dest`` (kept when a complete export of it is there)."""
    reg = Registry(root)
    m = reg.manifest(name, version)
    d = Path(dest)
    marker = d / "registry-manifest.json"
    complete = marker.is_file() and json.loads(marker.read_text()).get("version") == m.version and all(
        (d / f.path).is_file() for f in m.files)
    if not complete:
        if d.exists():
            shutil.rmtree(d)
        reg.export(name, version, d, link=True, with_manifest=True)
    return Staged(version=m.version, dir=str(d), files={f.path: str(d / f.path) for f in m.files})


def write_calibrated_modelfile(gguf: str, output: str, calibration: str | None) -> str:
    """Write an Ollama Modelfile for ``gguf`` (temperature from the calibration, when given)."""
    out = Path(output)
    out.unlink(missing_ok=True)  # may be a hard link to a read-only registry blob: never write through it
    return str(write_modelfile(gguf, out, calibration=calibration))


def calibrated_files(staged: Staged, results: str, diagram: str, modelfile: str) -> tuple[dict[str, str], dict[str, str]]:
    """The candidate's files plus calibration, with the Modelfile carrying the calibrated temperature."""
    files = {rel: p for rel, p in staged.files.items() if LAYOUT.kind(rel) != "calibration"}
    files[LAYOUT.modelfile] = modelfile
    files[LAYOUT.calibration] = results
    files[LAYOUT.reliability_diagram] = diagram
    return files, version_kinds(files)


def calibration_metrics(holdout: Any) -> dict[str, float]:
    """Held-out metrics after calibration, numbers only (undefined ones left out)."""
    names = ("ece", "classwise_ece", "brier", "nll", "macro_f1", "false_allow_rate", "false_allow_upper95",
             "false_deny_rate", "escalation_rate", "decision_accuracy")
    return {n: float(getattr(holdout, n)) for n in names if getattr(holdout, n) is not None}


def lineage_of(m: VersionManifest, extra_data: dict[str, str] | None = None) -> dict[str, Any]:
    """Lineage of a version derived from ``m``."""
    return {"parents": [m.version], "base_model": m.lineage.base_model,
            "dataset_hashes": {**m.lineage.dataset_hashes, **(extra_data or {})}, "code_revision": m.lineage.code_revision}


def code_revision() -> str | None:
    """The git revision of this checkout (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def convert_f16(cfg: ConvertConfig) -> ConversionResult:
    """The F16 GGUF of ``cfg.model_dir`` (converted and verified, or reused by its provenance)."""
    return run_conversion(cfg.model_copy(update={"quants": ()}))


def quantize_gguf(cfg: ConvertConfig) -> ConversionResult:
    """``cfg.quants`` from the F16 GGUF, and the Ollama Modelfile of the first (the served one)."""
    result = run_conversion(cfg)
    main = result.path(cfg.quants[0]) if cfg.quants else Path(result.f16_path)
    write_modelfile(main, Path(result.out_dir) / "Modelfile")
    return result
