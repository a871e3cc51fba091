"""Convert a Hugging Face model to GGUF with llama.cpp's own converter, quantize, verify, report.

Plan, then act: :func:`plan_conversion` decides, for ``{name}_f16.gguf`` and every
``{name}_{QUANT}.gguf``, whether a verified file can be reused or must be built;
:func:`run_conversion` logs the plan, builds what is missing (temporary file, then rename: never a
partial ``*.gguf``), verifies every output (tensor types read back with ``gguf.GGUFReader``;
fidelity of the next-token distribution against the HF model) and writes ``gguf_report.json``.

Reuse: each output has a sidecar ``<file>.provenance.json`` recording its own sha256, the sha256 of
its input (the HF directory's files, or the F16 GGUF) and the tool that made it (converter source
hash, llama-cpp-python version). An output is reused only when all of these still match.

Fallbacks (defined in :func:`quant_family` and docs/gguf.md): a tensor with two or more dimensions
whose type in the file is outside the requested quant's family. 1-D tensors (norms) stay F32 by
design and never count.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from so8t.digests import sha256_file
from so8t.decision import PROMPT_FILE, load_decision_prompt
from so8t.outpaths import check_output_dir
from so8t.errors import ConfigError, ModelError
from so8t.export.fidelity import Fidelity, measure_fidelity, probe_set  # so8t.export.gguf.Fidelity stays importable
from so8t.export.quantize import (
    K_TYPES,
    PARTIAL_TAG,
    inspect_gguf,
    normalize_quant,
    quant_family,
    quant_types,
    quantize_gguf,
    validate_quants,
)
from so8t.atomic import atomic_write_text
from so8t.export.converter import (
    ConverterSource,
    ensure_converter,
    hash_model_dir,
    llama_cpp_version,
    run_converter,
)

__all__ = [
    "ConversionPlan", "ConversionResult", "ConvertConfig", "Fidelity", "FileReport", "PlanStep", "convert_to_gguf",
    "inspect_gguf", "normalize_quant", "plan_conversion", "quant_family", "quant_types", "quantize_gguf",
    "run_conversion", "validate_quants", "K_TYPES", "REPORT", "SIDECAR_SUFFIX",
]

logger = logging.getLogger(__name__)

REPORT = "gguf_report.json"
SIDECAR_SUFFIX = ".provenance.json"


class ConvertConfig(BaseModel):
    """GGUF conversion and quantization (runbook: convert_and_quantize.sh MODEL OUT QUANT)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str = Field(description="Hugging Face model directory (config.json + safetensors + tokenizer), e.g. a baked SO8T model.")
    out_dir: str = Field(description="Directory for {name}_f16.gguf, {name}_{QUANT}.gguf, their provenance sidecars and gguf_report.json.")
    quants: tuple[str, ...] = Field(("Q5_K_M",), description="llama.cpp quantization types by name (Q4_K_M, Q5_K_M, Q8_0, ...); empty: F16 only.")
    name: str | None = Field(None, description="File name stem and GGUF general.name (default: the model directory's name).")
    llama_cpp_dir: str | None = Field(None, description="A llama.cpp checkout whose convert_hf_to_gguf.py to use (default: the sdist of the installed llama-cpp-python, cached).")
    fidelity: bool = Field(True, description="Compare each GGUF's next-token distributions with the HF model's on the probe prompts.")
    probes: tuple[str, ...] | None = Field(None, description="Plain-text probe prompts (default: built-in English, Japanese and chat-template probes).")
    max_f16_kl: float = Field(1e-3, gt=0, description="Verification gate: the F16 file's mean KL to the HF model must not exceed this.")
    threads: int = Field(0, ge=0, description="Threads for quantization and llama.cpp evaluation (0: all cores).")
    force: bool = Field(False, description="Rebuild every output even when a verified one exists.")
    verbose: bool = Field(False, description="Show llama.cpp's per-tensor log and the converter's output.")


class FileReport(BaseModel):
    """One GGUF file: what it is, where it came from, how faithful it is."""

    model_config = ConfigDict(frozen=True)

    file: str
    quant: str
    size_bytes: int
    sha256: str
    input_sha256: str
    tool: dict
    n_tensors: int
    tensor_types: dict[str, int]
    fallback_count: int
    fallback_tensors: dict[str, str]
    family: list[str]
    llama_cpp_fallbacks: int | None = None
    fidelity: Fidelity | None = None
    reused: bool = False
    seconds: float = 0.0


class PlanStep(BaseModel):
    """One output of the plan."""

    model_config = ConfigDict(frozen=True)

    action: str = Field(description="'convert', 'quantize' or 'reuse'.")
    quant: str
    output: str
    input: str
    reason: str


class ConversionPlan(BaseModel):
    """What a conversion will do; ``so8t convert --dry-run`` prints it."""

    model_config = ConfigDict(frozen=True)

    model_dir: str
    out_dir: str
    name: str
    input_sha256: str
    converter: dict
    steps: list[PlanStep]

    def describe(self) -> str:
        """Human-readable plan."""
        lines = [f"model   {self.model_dir} (sha256 {self.input_sha256[:12]})",
                 f"output  {self.out_dir}", f"convert {self.converter['description']}"]
        for i, s in enumerate(self.steps, 1):
            lines.append(f"[{i}/{len(self.steps)}] {s.action:8s} {s.quant:7s} {Path(s.input).name} -> {Path(s.output).name}  ({s.reason})")
        lines.append(f"report  {Path(self.out_dir) / REPORT}")
        return "\n".join(lines)


class ConversionResult(BaseModel):
    """What :func:`run_conversion` made; paths are absolute."""

    model_config = ConfigDict(frozen=True)

    out_dir: str
    report_path: str
    f16_path: str
    quant_paths: dict[str, str]
    files: list[FileReport]

    def path(self, quant: str) -> Path:
        """Path of the file for ``quant`` ('F16' or a requested quant name)."""
        q = normalize_quant(quant)
        return Path(self.f16_path if q == "F16" else self.quant_paths[q])


# ---------------------------------------------------------------- plan


def _check_inputs(cfg: ConvertConfig) -> tuple[Path, Path, str, tuple[str, ...]]:
    model_dir = Path(cfg.model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelError(f"model directory {cfg.model_dir!r} does not exist: pass a Hugging Face model directory (config.json, safetensors, tokenizer)")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: not a Hugging Face model directory (no config.json); pass the directory that save_pretrained wrote")
    from so8t.base_models import check_model_dir

    check_model_dir(model_dir)
    quants = validate_quants(cfg.quants)
    out_dir = Path(cfg.out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {cfg.out_dir!r} is a file: pass a directory for the GGUF files")
    _check_writable(out_dir)
    name = cfg.name or model_dir.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"name {name!r} is not a safe file stem: use letters, digits, '.', '_' or '-' (pass --name)")
    _check_llama_cpp_name_rules(model_dir, name)
    return model_dir.resolve(), out_dir.resolve(), name, quants


def _check_writable(out_dir: Path) -> None:
    """Fail before any work when ``out_dir`` cannot be created or written (no side effects)."""
    check_output_dir(out_dir, "out_dir")


def _check_llama_cpp_name_rules(model_dir: Path, name: str) -> None:
    """llama.cpp gives models whose general.name contains 'phi3'/'phi-3' Phi-3 token rules that need
    the tokens <unk>, <s>, </s> and <|endoftext|>; without them the GGUF cannot be loaded. Check first."""
    if not re.search(r"phi-?3", name.lower()):
        return
    tok_json = model_dir / "tokenizer.json"
    if not tok_json.is_file():
        return
    try:
        data = json.loads(tok_json.read_text(encoding="utf-8"))
    except ValueError:
        return
    vocab = data.get("model", {}).get("vocab", {})
    tokens = set(vocab) if isinstance(vocab, dict) else {v[0] for v in vocab if isinstance(v, list) and v}
    tokens |= {t.get("content") for t in data.get("added_tokens", [])}
    missing = [t for t in ("<unk>", "<s>", "</s>", "<|endoftext|>") if t not in tokens]
    if missing:
        raise ConfigError(
            f"name {name!r} contains 'phi3': llama.cpp then applies Phi-3 token rules that need {', '.join(missing)}, "
            f"missing from this tokenizer, and could not load the GGUF; pass a --name without 'phi3' (e.g. --name model)"
        )


def _reusable(out: Path, input_sha: str, tool: dict) -> tuple[bool, str]:
    side = out.with_name(out.name + SIDECAR_SUFFIX)
    if not out.is_file():
        return False, "missing"
    if not side.is_file():
        return False, "no provenance sidecar"
    try:
        rec = json.loads(side.read_text())
    except ValueError:
        return False, "unreadable provenance sidecar"
    if rec.get("input_sha256") != input_sha:
        return False, "input changed"
    if rec.get("tool") != tool:
        return False, "converter or llama.cpp version changed"
    if rec.get("size_bytes") != out.stat().st_size or rec.get("sha256") != sha256_file(out):
        return False, "output does not match its recorded sha256"
    return True, "verified: same input, same tool"


def _tools(conv: ConverterSource | dict) -> tuple[dict, dict]:
    c = conv if isinstance(conv, dict) else conv.identity()
    convert_tool = {"converter": c["sha256"], "converter_version": c["version"]}
    quant_tool = {"llama_cpp_python": llama_cpp_version()}
    return convert_tool, quant_tool


def plan_conversion(cfg: ConvertConfig, converter: ConverterSource | None = None) -> ConversionPlan:
    """Decide what to build and what to reuse; touches nothing.

    Args:
        cfg: The conversion settings.
        converter: A resolved converter; None describes the one that would be used (no download).

    Raises:
        ModelError: missing model directory or config.json.
        ConfigError: unknown quant type, bad name or out_dir.
    """
    model_dir, out_dir, name, quants = _check_inputs(cfg)
    from so8t.export.converter import describe_converter

    conv = converter.identity() if converter else describe_converter(cfg.llama_cpp_dir)
    input_sha = hash_model_dir(model_dir)
    convert_tool, quant_tool = _tools(conv)
    f16 = out_dir / f"{name}_f16.gguf"
    steps = []
    ok, why = (False, "--force") if cfg.force else _reusable(f16, input_sha, convert_tool)
    if conv["sha256"] is None and not cfg.force:
        ok, why = False, "converter not fetched yet" if f16.is_file() else "missing"
    steps.append(PlanStep(action="reuse" if ok else "convert", quant="F16", output=str(f16), input=str(model_dir), reason=why))
    f16_sha = _sidecar(f16).get("sha256") if ok else None
    for q in quants:
        out = out_dir / f"{name}_{q}.gguf"
        if f16_sha is None or cfg.force:
            ok_q, why_q = False, "--force" if cfg.force else "F16 is (re)built"
        else:
            ok_q, why_q = _reusable(out, f16_sha, {**quant_tool, "quant": q})
        steps.append(PlanStep(action="reuse" if ok_q else "quantize", quant=q, output=str(out), input=str(f16), reason=why_q))
    return ConversionPlan(model_dir=str(model_dir), out_dir=str(out_dir), name=name, input_sha256=input_sha,
                          converter=conv, steps=steps)


def _sidecar(out: Path) -> dict:
    try:
        return json.loads(out.with_name(out.name + SIDECAR_SUFFIX).read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- act and verify


def run_conversion(cfg: ConvertConfig) -> ConversionResult:
    """Plan, convert, quantize, verify and report (see the module docstring).

    Raises:
        ModelError: bad model directory, converter or quantizer failure, F16 fidelity gate failed.
        ConfigError: bad quant names, name or out_dir (also one that cannot be written).
        DataError: a broken decision_prompt.json in the model directory.
    """
    model_dir, _, _, _ = _check_inputs(cfg)  # before anything is written
    prompt_file = model_dir / PROMPT_FILE
    if prompt_file.is_file():
        load_decision_prompt(prompt_file)  # the training run's decision prompt travels with the GGUFs
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    if out_dir == model_dir.resolve() or model_dir.resolve() in out_dir.parents:
        # the GGUFs would become part of the model directory, whose content decides whether they are current
        raise ConfigError(f"out_dir {out_dir} is inside model_dir {model_dir}: every conversion would change the "
                          "model's content and start again; choose an out_dir outside the model directory")
    converter = ensure_converter(cfg.llama_cpp_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # e.g. a read-only file system, which access() does not see
    except OSError as e:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise ConfigError(f"out_dir {out_dir}: cannot write there ({e.strerror or e}): pass a directory you can write to") from None
    try:
        return _run_locked(cfg, converter, out_dir, prompt_file if prompt_file.is_file() else None)
    except BaseException:
        # A failed first conversion leaves no directory behind (only its lock file could be in it).
        if created and {p.name for p in out_dir.iterdir()} <= {".so8t-convert.lock"}:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _run_locked(cfg: ConvertConfig, converter: ConverterSource, out_dir: Path, prompt_file: Path | None) -> ConversionResult:
    from filelock import FileLock

    with FileLock(str(out_dir / ".so8t-convert.lock")):
        for stale in out_dir.glob(f".*{PARTIAL_TAG}*"):
            stale.unlink(missing_ok=True)
        plan = plan_conversion(cfg, converter)
        logger.info("conversion plan:\n%s", plan.describe())
        records: list[dict] = []
        f16 = Path(plan.steps[0].output)
        try:
            for i, step in enumerate(plan.steps, 1):
                records.append(_act(cfg, plan, step, i, converter))
            reports, todo = _verify(cfg, plan, records, out_dir)
        except BaseException:
            for step in plan.steps:  # never leave outputs of this run behind unverified
                if step.action != "reuse":
                    Path(step.output).unlink(missing_ok=True)
                    Path(step.output + SIDECAR_SUFFIX).unlink(missing_ok=True)
            raise
        remeasured = {r["file"] for r in todo}
        for rep in reports:
            if not rep.reused or rep.file in remeasured:
                side = rep.model_dump(mode="json", exclude={"reused", "seconds"})
                atomic_write_text(out_dir / (rep.file + SIDECAR_SUFFIX), json.dumps(side, indent=2) + "\n")
        report = {
            "model_dir": plan.model_dir, "input_sha256": plan.input_sha256, "name": plan.name,
            "converter": converter.identity(), "llama_cpp_python": llama_cpp_version(),
            "fallback_definition": "2-D tensors whose type is outside the requested quant's family (see 'family' per file; docs/gguf.md)",
            "files": [r.model_dump(mode="json") for r in reports],
        }
        report_path = out_dir / REPORT
        atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if prompt_file is not None:
            atomic_write_text(out_dir / PROMPT_FILE, prompt_file.read_text(encoding="utf-8"))
    for r in reports:
        fid = r.fidelity
        extra = f", KL mean {fid.mean_kl:.2e} max {fid.max_kl:.2e}, top-1 {fid.top1_agreement:.3f}" if fid else ""
        logger.info("%s: %.1f MB, %d fallback(s)%s%s", r.file, r.size_bytes / 1e6, r.fallback_count, extra, " (reused)" if r.reused else "")
    return ConversionResult(
        out_dir=str(out_dir), report_path=str(report_path), f16_path=str(f16),
        quant_paths={s.quant: s.output for s in plan.steps[1:]}, files=reports,
    )


def _act(cfg: ConvertConfig, plan: ConversionPlan, step: PlanStep, i: int, converter: ConverterSource) -> dict:
    """Carry out one plan step; returns its record (the FileReport fields known so far)."""
    convert_tool, quant_tool = _tools(converter)
    out, f16, n = Path(step.output), Path(plan.steps[0].output), len(plan.steps)
    t0 = time.time()
    rec: dict = {"file": out.name, "quant": step.quant, "reused": step.action == "reuse"}
    if step.action == "reuse":
        logger.info("[%d/%d] reusing verified %s (%s)", i, n, out.name, step.reason)
        rec.update({k: v for k, v in _sidecar(out).items() if k not in ("reused", "seconds", "file")})
    elif step.action == "convert":
        logger.info("[%d/%d] converting %s -> %s (llama.cpp convert_hf_to_gguf.py)", i, n, plan.model_dir, out.name)
        run_converter(converter, Path(plan.model_dir), out, plan.name, verbose=cfg.verbose)
        rec.update({"input_sha256": plan.input_sha256, "tool": convert_tool})
    else:
        logger.info("[%d/%d] quantizing %s -> %s", i, n, f16.name, out.name)
        n_fb = quantize_gguf(f16, out, step.quant, threads=cfg.threads, verbose=cfg.verbose)
        rec.update({"input_sha256": sha256_file(f16), "tool": {**quant_tool, "quant": step.quant}, "llama_cpp_fallbacks": n_fb})
    if step.action != "reuse":
        rec.update(inspect_gguf(out, step.quant))
        rec.update({"size_bytes": out.stat().st_size, "sha256": sha256_file(out), "fidelity": None})
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def _verify(cfg: ConvertConfig, plan: ConversionPlan, records: list[dict], out_dir: Path) -> tuple[list[FileReport], list[dict]]:
    """Measure fidelity where missing and apply the F16 gate; returns the reports and the re-measured records."""
    todo: list[dict] = []
    if cfg.fidelity:
        probes = probe_set(Path(plan.model_dir), cfg.probes)
        todo = [r for r in records if not r.get("fidelity") or r["fidelity"].get("probes_sha256") != probes.sha256
                or r["fidelity"].get("median_kl") is None]  # measured before the median was recorded
        if todo:
            measured = measure_fidelity(Path(plan.model_dir), [out_dir / r["file"] for r in todo], probes, threads=cfg.threads)
            for r in todo:
                r["fidelity"] = measured[r["file"]].model_dump()
    reports = [FileReport(**r) for r in records]
    f16 = reports[0]
    if f16.fidelity is not None and not f16.fidelity.mean_kl <= cfg.max_f16_kl:
        raise ModelError(
            f"{f16.file}: mean KL {f16.fidelity.mean_kl:.3g} to the HF model exceeds max_f16_kl {cfg.max_f16_kl:g}: "
            f"the conversion is not faithful; check the converter version (--llama_cpp_dir) and the model directory"
        )
    return reports, todo


def convert_to_gguf(model_dir: str | Path, out_dir: str | Path, quants: tuple[str, ...] | list[str] = ("Q5_K_M",),
                    name: str | None = None, **options) -> ConversionResult:
    """Convenience wrapper: ``run_conversion(ConvertConfig(...))``.

    Args:
        model_dir: Hugging Face model directory.
        out_dir: Output directory.
        quants: Quant type names (F16 is always made).
        name: File stem (default: the model directory's name).
        **options: Other :class:`ConvertConfig` fields (fidelity, probes, llama_cpp_dir, force, ...).

    Returns:
        The conversion result with per-file reports.
    """
    from so8t.config import build_config

    cfg = build_config(ConvertConfig, {"model_dir": str(model_dir), "out_dir": str(out_dir),
                                       "quants": tuple(quants), "name": name, **options})
    return run_conversion(cfg)
