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
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from so8t.errors import ModelError
from so8t.gates import find_attention_layers, iter_gates, load_gates, read_gates, remove_gates
from so8t.rotation import fold_into_weight, orthogonality_error, rotations_from_params

logger = logging.getLogger(__name__)

REPORT_FILE = "bake_report.json"

#: Probe prompts (English, Japanese, and the decision prompt's shape), rendered with the chat template.
DEFAULT_PROBES: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain in one sentence why calibration matters for a safety classifier.",
    "富士山の高さは何メートルですか？",
    "次の依頼を安全性の観点で分類してください: パスワードを忘れました。",
    "Write a haiku about rotations in eight dimensions.",
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
    layers_folded: list[LayerFold]
    lora_merged: bool
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


def _probe_ids(tok: Any, probes: tuple[str, ...]) -> list[list[int]]:
    ids = []
    for p in probes:
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            ids.append(list(tok(text, add_special_tokens=False)["input_ids"]))
        else:
            ids.append(list(tok(p)["input_ids"]))
    return ids


@torch.no_grad()
def probe_logits(model: torch.nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    """fp32 logits ``(T_i, V)`` of each probe, in one right-padded batch.

    Right padding with an attention mask leaves every real position's logits unchanged (causal
    attention never looks ahead), so one forward pass serves all probes.
    """
    model.eval()
    n = max(len(x) for x in ids)
    batch = torch.zeros(len(ids), n, dtype=torch.long)  # (P, T)
    mask = torch.zeros(len(ids), n, dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    logits = model(input_ids=batch, attention_mask=mask).logits.float()  # (P, T, V)
    return [logits[i, : len(x)] for i, x in enumerate(ids)]


def compare_logits(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict[str, float]:
    """max |delta logit|, mean/max KL(ref || got) of next-token distributions, top-1 agreement."""
    deltas, kls, agree, n = [], [], 0, 0
    for a, b in zip(ref, got):
        deltas.append(float((a - b).abs().max()))
        la, lb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
        kl = (la.exp() * (la - lb)).sum(-1)  # (T,)
        kls.append(kl)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += a.shape[0]
    allkl = torch.cat(kls)
    return {"max_abs_logit_delta": max(deltas), "mean_kl": float(allkl.mean()), "max_kl": float(allkl.max()),
            "top1_agreement": agree / n, "tokens": n}


def _base_spec(cfg: BakeConfig) -> str:
    if cfg.base_model:
        return cfg.base_model
    resolved = Path(cfg.model_path) / "so8t_train_config.json"
    for p in (resolved, Path(cfg.model_path).parent / "so8t_train_config.json"):
        if p.is_file():
            return json.loads(p.read_text())["config"]["base_model"]
    raise ModelError(f"{cfg.model_path}: no so8t_train_config.json to find the base model: pass --base_model")


def bake(cfg: BakeConfig) -> BakeReport:
    """Bake a trained SO8T adapter into a plain model at ``cfg.output_path``; always verified.

    Raises:
        ModelError: no adapter/gates, failed verification, existing output without overwrite.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from so8t.base_models import resolve_base_model

    src, out = Path(cfg.model_path), Path(cfg.output_path)
    if not (src / "adapter_config.json").is_file():
        raise ModelError(f"{src}: no adapter_config.json: pass a so8t train output or checkpoint directory")
    gate_tensors, meta = read_gates(src)  # refuses a directory without gates
    if not gate_tensors:
        raise ModelError(f"{src}: the gates file holds no gates: nothing to bake")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ModelError(f"output_path {out} exists and is not empty: choose another path or pass --overwrite")
    base_dir = resolve_base_model(_base_spec(cfg))
    tok_dir = src / "tokenizer" if (src / "tokenizer").is_dir() else (src.parent / "tokenizer" if (src.parent / "tokenizer").is_dir() else base_dir)
    tok = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=cfg.trust_remote_code)

    # Full precision reload: LoRA is never merged into 4-bit weights.
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    model = PeftModel.from_pretrained(base, str(src), is_trainable=False)
    load_gates(model, src)
    ids = _probe_ids(tok, DEFAULT_PROBES)
    reference = probe_logits(model, ids)

    rotations = {i: rotations_from_params(g.generators.detach()) for i, g in iter_gates(model)}
    remove_gates(model)
    merged = model.merge_and_unload()
    if list(iter_gates(merged)):
        raise ModelError("bake: gates remain after removal")
    attn = {g.index: g.attention for g in find_attention_layers(merged)}
    folds = []
    with torch.no_grad():
        sd = {f"model.layers.{i}.self_attn.o_proj.weight": attn[i].o_proj.weight for i in rotations}
        new = fold_rotations(sd, rotations)
        for i, rot in sorted(rotations.items()):
            key = f"model.layers.{i}.self_attn.o_proj.weight"
            err = orthogonality_error(rot)
            if err > cfg.max_orthogonality_error:
                raise ModelError(f"bake: layer {i} rotation has orthogonality error {err:.2e} > {cfg.max_orthogonality_error:.0e}")
            change = float((new[key] - attn[i].o_proj.weight).abs().max())
            attn[i].o_proj.weight.copy_(new[key])
            folds.append(LayerFold(layer=i, orthogonality_error=err, max_abs_weight_change=change))
    baked_logits = probe_logits(merged, ids)
    cmp = compare_logits(reference, baked_logits)
    passed = cmp["max_abs_logit_delta"] <= cfg.max_abs_logit_delta and cmp["mean_kl"] <= cfg.max_kl
    report = BakeReport(
        model_path=str(src), base_model=str(base_dir), output_path=str(out), dtype="float32",
        layers_folded=folds, lora_merged=True, probe_count=len(ids), probe_tokens=int(cmp["tokens"]),
        max_abs_logit_delta=cmp["max_abs_logit_delta"], mean_kl=cmp["mean_kl"], max_kl=cmp["max_kl"],
        top1_agreement=cmp["top1_agreement"], passed=passed,
        tolerances={"max_abs_logit_delta": cfg.max_abs_logit_delta, "max_kl": cfg.max_kl,
                    "max_orthogonality_error": cfg.max_orthogonality_error},
    )
    logger.info("bake check: %d layers folded (%s), max |delta logit| %.2e, mean KL %.2e, top-1 %.4f",
                len(folds), meta.get("layers"), report.max_abs_logit_delta, report.mean_kl, report.top1_agreement)
    if not passed or not all(math.isfinite(x) for x in (report.max_abs_logit_delta, report.mean_kl)):
        raise ModelError(
            f"bake verification failed: max |delta logit| {report.max_abs_logit_delta:.2e} (limit {cfg.max_abs_logit_delta:.0e}), "
            f"mean KL {report.mean_kl:.2e} (limit {cfg.max_kl:.0e}); nothing written"
        )
    _write_model(merged, tok, base_dir, out, report)
    return report


def _write_model(model: torch.nn.Module, tok: Any, base_dir: Path, out: Path, report: BakeReport) -> None:
    """save_pretrained into a temporary sibling, then rename into place (no half-written output)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
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
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
