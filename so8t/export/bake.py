"""Bake-in: merge LoRA, fold every gate's rotation into its ``o_proj``, remove the gates.

``o_proj(R x) = W (R x) = (W R) x``, so ``W' = W @ blockdiag(R)`` (column-vector convention; bias
unchanged). LoRA is merged first into a full-precision reload of the base (never into 4-bit
weights), so ``W`` is the merged weight the gate was trained in front of. The result is a plain
model of the base architecture. The bake always verifies itself: probe prompts go through
(base + LoRA + gates) and through the baked model, and a bake whose logits differ beyond the
tolerance, or that finds no gates, is an error.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from so8t.atomic import atomic_directory
from so8t.decision import PROMPT_FILE, load_decision_prompt
from so8t.errors import ModelError
from so8t.training.gates import find_attention_layers, iter_gates, read_gates, remove_gates
from so8t.export.logit_compare import compare_logit_sets
from so8t.training.rotation import fold_into_weight, orthogonality_error, rotations_from_params

logger = logging.getLogger(__name__)

REPORT_FILE = "bake_report.json"

#: Probe prompts (English, Japanese, the decision prompt's shape), tokenized as plain text and
#: run as one sequence through both models. A wrong fold or merge moves every logit after the
#: first token by O(1), so a few dozen tokens expose it as surely as hundreds; more probes only
#: cost time (the two forward passes are most of a bake on a CPU). ``--probe_file`` adds a
#: user's own prompts.
DEFAULT_PROBES: tuple[str, ...] = (
    "What is the capital of France?",
    "富士山の高さは何メートルですか？",
    "Explain in one sentence why calibration matters.",
    "Request: help me plan a birthday party. Decision (ALLOW, ESCALATE or DENY):",
)


class BakeConfig(BaseModel):
    """Bake-in of a trained SO8T adapter into a plain model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str = Field(description="Training output or checkpoint directory (adapter + so8t_gates.safetensors).")
    output_path: str = Field(description="Where the baked Hugging Face model is written (must not exist unless --overwrite).")
    base_model: str | None = Field(None, description="Base model ('smollm2' or a directory); default: the one recorded at training.")
    max_abs_logit_delta: float = Field(1e-3, gt=0, description="Fail when any probe logit differs by more than this (fp32).")
    max_kl: float = Field(1e-6, gt=0, description="Fail when the mean next-token KL(gated || baked) over probe positions exceeds this.")
    max_orthogonality_error: float = Field(1e-5, gt=0, description="Fail when any rotation has max |R^T R - I| above this.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the merge, fold and verification run (auto: cuda when available; fp32 either way, "
                            "TF32 off).")
    probe_file: str | None = Field(None, description="Text file with one probe prompt per line, used instead of the built-in probes "
                                   "(English, Japanese, a decision prompt; ~70 tokens).")
    overwrite: bool = Field(False, description="Replace an existing output_path.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code of the base model.")


class LayerFold(BaseModel):
    """One folded layer."""

    layer: int
    orthogonality_error: float
    max_abs_weight_change: float


class BakeReport(BaseModel):
    """What the bake did and how closely the baked model matches the gated one."""

    model_path: str
    base_model: str
    output_path: str
    dtype: str
    device: str = "cpu"
    layers_folded: list[LayerFold]
    lora_merged: bool
    lora_modules: int = 0
    probe_count: int
    probe_tokens: int
    max_abs_logit_delta: float
    mean_kl: float
    max_kl: float
    top1_agreement: float
    passed: bool
    tolerances: dict[str, float]


def fold_rotations(state_dict: dict[str, torch.Tensor], gates: dict[int, torch.Tensor],
                   weight_key: str = "model.layers.{i}.self_attn.o_proj.weight") -> dict[str, torch.Tensor]:
    """Fold rotations into ``o_proj`` weights of a state dict; returns the changed tensors only.

    Args:
        state_dict: Full-precision weights (never 4-bit).
        gates: Layer index -> ``(d/8, 8, 8)`` rotations.
        weight_key: Key pattern of a layer's ``o_proj`` weight.

    Returns:
        ``{key: W @ blockdiag(R)}`` for every gated layer.

    Raises:
        ModelError: missing key, quantized or non-finite weight.
    """
    out = {}
    for i, rot in sorted(gates.items()):
        key = weight_key.format(i=i)
        if key not in state_dict:
            raise ModelError(f"bake: no {key} in the model: cannot fold layer {i}'s rotation")
        w = state_dict[key]
        if not w.is_floating_point() or w.dtype in (torch.uint8, torch.int8):
            raise ModelError(f"bake: {key} has dtype {w.dtype}: never fold into quantized weights; reload the base in full precision")
        folded = fold_into_weight(w, rot)
        if not torch.isfinite(folded).all():
            raise ModelError(f"bake: folding layer {i} produced non-finite weights")
        out[key] = folded
    return out


def read_probes(path: str | None) -> tuple[str, ...]:
    """Probe prompts: the built-in ones, or one per non-blank line of ``path``.

    Raises:
        ModelError: unreadable file, or a file with no prompt.
    """
    if path is None:
        return DEFAULT_PROBES
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read the probe file: {e}") from None
    probes = tuple(line for line in lines if line.strip())
    if not probes:
        raise ModelError(f"{path}: the probe file has no non-blank line")
    return probes


def _probe_ids(tok: Any, probes: tuple[str, ...]) -> list[list[int]]:
    ids = [list(tok(p)["input_ids"]) for p in probes]
    for p, x in zip(probes, ids):
        if not x:
            raise ModelError(f"bake: probe {p!r} tokenizes to nothing")
    return ids


@torch.no_grad()
def probe_logits(model: torch.nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    """fp32 logits ``(T_i, V)`` of each probe, from one forward pass over all probes in sequence.

    The probes are concatenated into a single sequence (no padding to pay for); each probe's
    logits are its slice of that sequence. Both sides of the check see exactly the same tokens.
    """
    model.eval()
    flat = torch.tensor([t for x in ids for t in x], dtype=torch.long)[None]  # (1, T)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and flat.shape[1] > limit:
        raise ModelError(f"bake: the probes total {flat.shape[1]} tokens, more than the model's {limit} positions: use fewer or shorter probes")
    device = next(model.parameters()).device
    logits = model(input_ids=flat.to(device), use_cache=False).logits[0].float().cpu()  # (T, V)
    return list(logits.split([len(x) for x in ids], 0))


def _bake_device(spec: str) -> torch.device:
    """The bake's device; fp32 matmuls without TF32, so the check means the same on a GPU."""
    if spec == "cuda" or (spec == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelError("bake --device cuda: no CUDA device is available (use --device cpu or auto)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    return torch.device("cpu")


def _from_run(src: Path, name: str) -> Path | None:
    """``name`` in the training output: in ``src`` itself, or in its parent when ``src`` is a checkpoint."""
    return next((d / name for d in (src, src.parent) if (d / name).exists()), None)


def _base_spec(cfg: BakeConfig) -> str:
    if cfg.base_model:
        return cfg.base_model
    resolved = _from_run(Path(cfg.model_path), "so8t_train_config.json")
    if resolved is None:
        raise ModelError(f"{cfg.model_path}: no so8t_train_config.json to find the base model: pass --base_model")
    return json.loads(resolved.read_text())["config"]["base_model"]


def bake(cfg: BakeConfig) -> BakeReport:
    """Bake a trained SO8T adapter into a plain model at ``cfg.output_path``; always verified.

    One full-precision load of the base serves both sides of the check: the reference is the
    base with the adapter applied unmerged (``W x + s B A x``, forward hooks) and the gates'
    pre-hooks rotating each ``o_proj`` input, exactly as in training; then the hooks come off,
    LoRA is merged (``W + s B A``), each rotation is folded (``W' = (W + s B A) R``), and the same
    probes run through the now plain model.

    Raises:
        ModelError: no adapter/gates, failed verification, existing output without overwrite.
    """
    from so8t.base_models import load_causal_lm, resolve_base_model
    from so8t.training.gates import load_gates
    from so8t.training.lora import attach_unmerged

    src, out = Path(cfg.model_path), Path(cfg.output_path)
    meta, lora, probes, prompt_file = _check_inputs(cfg, src, out)
    base_dir = resolve_base_model(_base_spec(cfg))
    tok = _load_tokenizer(_from_run(src, "tokenizer") or base_dir, cfg.trust_remote_code)
    # Full precision reload: LoRA is never merged into 4-bit weights.
    model = load_causal_lm(base_dir, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    device = _bake_device(cfg.device)
    model.to(device).eval()
    hooks = attach_unmerged(model, lora)
    load_gates(model, src)
    ids = _probe_ids(tok, probes)
    reference = probe_logits(model, ids)
    folds = _merge_and_fold(model, hooks, lora, device, cfg.max_orthogonality_error)
    cmp = compare_logit_sets(reference, probe_logits(model, ids))
    report = BakeReport(
        model_path=str(src), base_model=str(base_dir), output_path=str(out), dtype="float32", device=device.type,
        layers_folded=folds, lora_merged=True, lora_modules=len(lora), probe_count=len(ids), probe_tokens=int(cmp["tokens"]),
        max_abs_logit_delta=cmp["max_abs_logit_delta"], mean_kl=cmp["mean_kl"], max_kl=cmp["max_kl"],
        top1_agreement=cmp["top1_agreement"],
        passed=cmp["max_abs_logit_delta"] <= cfg.max_abs_logit_delta and cmp["mean_kl"] <= cfg.max_kl,
        tolerances={"max_abs_logit_delta": cfg.max_abs_logit_delta, "max_kl": cfg.max_kl,
                    "max_orthogonality_error": cfg.max_orthogonality_error},
    )
    logger.info("bake check: %d layers folded (%s), %d LoRA modules merged, %d probe tokens, max |delta logit| %.2e, "
                "mean KL %.2e, top-1 %.4f", len(folds), meta.get("layers"), len(lora), report.probe_tokens,
                report.max_abs_logit_delta, report.mean_kl, report.top1_agreement)
    if not report.passed or not all(math.isfinite(x) for x in (report.max_abs_logit_delta, report.mean_kl)):
        raise ModelError(
            f"bake verification failed: max |delta logit| {report.max_abs_logit_delta:.2e} (limit {cfg.max_abs_logit_delta:.0e}), "
            f"mean KL {report.mean_kl:.2e} (limit {cfg.max_kl:.0e}); nothing written"
        )
    _write_model(model, tok, base_dir, out, report, prompt_file)
    return report


def _check_inputs(cfg: BakeConfig, src: Path, out: Path) -> tuple[dict, Any, tuple[str, ...], Path | None]:
    """Every check that needs no model, before any load: ``(gates metadata, LoRA weights, probes, the run's
    decision prompt file or None)``."""
    from so8t.outpaths import check_output_dir
    from so8t.training.lora import read_adapter

    if not (src / "adapter_config.json").is_file():
        raise ModelError(f"{src}: no adapter_config.json: pass a so8t train output or checkpoint directory")
    gate_tensors, meta = read_gates(src)  # refuses a directory without gates
    if not gate_tensors:
        raise ModelError(f"{src}: the gates file holds no gates: nothing to bake")
    check_output_dir(out, "output_path")  # a file, under a file, or unwritable: refused before any load
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ModelError(f"output_path {out} exists and is not empty: choose another path or pass --overwrite")
    lora = read_adapter(src)
    probes = read_probes(cfg.probe_file)
    # The decision prompt the run trained on travels with the model (convert and calibrate read it).
    prompt_file = _from_run(src, PROMPT_FILE)
    if prompt_file is not None:
        load_decision_prompt(prompt_file)  # a broken file fails here, before anything is written
    return meta, lora, probes, prompt_file


def _load_tokenizer(tok_dir: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    from so8t.base_models import load_error

    try:
        return AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - anything transformers raises on a user's model is a bad model
        raise load_error(tok_dir, e) from None


def _merge_and_fold(model: torch.nn.Module, hooks: list, lora: Any, device: torch.device,
                    max_orthogonality_error: float) -> list[LayerFold]:
    """The gated model (unmerged LoRA hooks, gates) made plain in place: the gates' rotations read, hooks and
    gates removed, LoRA merged, each rotation folded into its layer's ``o_proj``."""
    from so8t.training.lora import merge_into

    gates = dict(iter_gates(model))
    with torch.no_grad():
        rotations = {i: rotations_from_params(g.generators.detach(), g.mapping) for i, g in gates.items()}
    for h in hooks:
        h.remove()
    remove_gates(model)
    if list(iter_gates(model)):
        raise ModelError("bake: gates remain after removal")
    merge_into(model, lora)
    attn = {g.index: g.attention for g in find_attention_layers(model)}
    folds = []
    with torch.no_grad():
        sd = {f"model.layers.{i}.self_attn.o_proj.weight": attn[i].o_proj.weight for i in rotations}
        new = fold_rotations(sd, {i: r.to(device) for i, r in rotations.items()})
        for i, rot in sorted(rotations.items()):
            key = f"model.layers.{i}.self_attn.o_proj.weight"
            err = orthogonality_error(rot)
            if err > max_orthogonality_error:
                raise ModelError(f"bake: layer {i} rotation has orthogonality error {err:.2e} > {max_orthogonality_error:.0e}")
            change = float((new[key] - attn[i].o_proj.weight).abs().max())
            attn[i].o_proj.weight.data = new[key]  # a fresh tensor: see so8t.training.lora.merge_into
            folds.append(LayerFold(layer=i, orthogonality_error=err, max_abs_weight_change=change))
    return folds


def _write_model(model: torch.nn.Module, tok: Any, base_dir: Path, out: Path, report: BakeReport,
                 prompt_file: Path | None = None) -> None:
    """save_pretrained into a temporary sibling, then rename into place (no half-written output)."""
    with atomic_directory(out) as tmp:
        model.config.dtype = torch.float32
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        gen = base_dir / "generation_config.json"
        if gen.is_file():
            shutil.copy(gen, tmp / "generation_config.json")
        cfg = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in cfg:
            raise ModelError("bake: the baked config carries a quantization_config: refusing to write it")
        (tmp / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
        if prompt_file is not None:
            shutil.copy(prompt_file, tmp / PROMPT_FILE)
