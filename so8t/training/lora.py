"""Read a saved peft LoRA adapter and apply it to a plain model: unmerged (hooks) or merged.

The bake needs two things from an adapter: the model *with* the adapter as trained (unmerged,
``y = W x + s B (A x)``) to produce the reference logits, and the merged weights
``W + s B A`` to fold the rotations into. peft's own ``PeftModel.from_pretrained`` +
``merge_and_unload`` does both but costs more than the rest of the bake together on a CPU (it
wraps every target module, initialises throw-away LoRA weights, and merges with copies), so the
bake reads the adapter file directly. Only the LoRA variant ``so8t train`` produces (and plain
LoRA in general) is accepted: any adapter option that changes the arithmetic (DoRA, LoRA bias,
fan-in/fan-out layout, modules to save, layer replication, ...) is refused with a clear error
instead of being silently mis-applied. ``tests/integration/test_lora.py`` checks both paths
against peft on tiny Llama and Phi-3 models, including rsLoRA and per-module rank/alpha patterns.

Scaling follows peft: ``s = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA; ``r`` and ``alpha``
come from ``rank_pattern`` / ``alpha_pattern`` when a pattern matches the module name (the
pattern must match a suffix of the dotted name starting at a component boundary).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from so8t.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")

#: Adapter options that change the arithmetic, with the value that means "off".
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "use_dora": (False, None),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "fan_in_fan_out": (False, None),
    "modules_to_save": (None, []),
    "layer_replication": (None, []),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "alora_invocation_tokens": (None, []),
    "use_qalora": (False, None),
}


@dataclass(frozen=True)
class LoraModule:
    """One adapted Linear: ``y = W x + scaling * B (A x)``."""

    name: str
    a: torch.Tensor  # (r, in_features)
    b: torch.Tensor  # (out_features, r)
    scaling: float


def _pattern_value(patterns: dict, name: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_adapter(directory: str | Path) -> list[LoraModule]:
    """The LoRA modules of a saved peft adapter directory, with their scalings.

    Raises:
        ModelError: missing or malformed files, a non-LoRA adapter, an unsupported option, an
            A/B pair that is incomplete or whose shapes do not fit.
    """
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, weights_path = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_path.is_file():
        raise ModelError(f"{d}: no {ADAPTER_CONFIG}: pass a so8t train output or checkpoint directory")
    if not weights_path.is_file():
        raise ModelError(f"{d}: no {ADAPTER_WEIGHTS} (only safetensors adapters are read)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{cfg_path}: not readable JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ModelError(f"{cfg_path}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else None!r}: only LoRA adapters can be baked")
    for key, off in _UNSUPPORTED.items():
        if cfg.get(key) not in off:
            raise ModelError(f"{cfg_path}: field {key}={cfg[key]!r} is not supported by the bake (plain LoRA only)")
    r_default, alpha_default = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r_default, int) or r_default <= 0 or not isinstance(alpha_default, (int, float)):
        raise ModelError(f"{cfg_path}: fields r / lora_alpha must be a positive integer / a number")
    rslora = bool(cfg.get("use_rslora", False))

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        m = _KEY_RE.match(key)
        if not key.startswith(_PREFIX) or m is None:
            raise ModelError(f"{weights_path}: tensor {key!r} is not a LoRA A/B weight of a Linear layer (plain LoRA only)")
        pairs.setdefault(m.group("module")[len(_PREFIX):], {})[m.group("part")] = tensor
    if not pairs:
        raise ModelError(f"{weights_path}: holds no LoRA weights")
    modules = []
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ModelError(f"{weights_path}: module {name} has lora_{''.join(ab)} but not both lora_A and lora_B")
        a, b = ab["A"].float(), ab["B"].float()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ModelError(f"{weights_path}: module {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not chain")
        r = _pattern_value(cfg.get("rank_pattern"), name, r_default)
        if r != a.shape[0]:
            raise ModelError(f"{weights_path}: module {name} has rank {a.shape[0]} but the config says r={r}")
        alpha = _pattern_value(cfg.get("alpha_pattern"), name, alpha_default)
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        modules.append(LoraModule(name=name, a=a, b=b, scaling=float(scaling)))
    return modules


def _targets(model: nn.Module, modules: list[LoraModule]) -> list[tuple[LoraModule, nn.Linear]]:
    by_name = dict(model.named_modules())
    out = []
    for lm in modules:
        layer = by_name.get(lm.name)
        if not isinstance(layer, nn.Linear):
            what = "missing" if layer is None else type(layer).__name__
            raise ModelError(f"LoRA module {lm.name}: the base model's module is {what}, expected a full-precision Linear")
        if (layer.out_features, layer.in_features) != (lm.b.shape[0], lm.a.shape[1]):
            raise ModelError(
                f"LoRA module {lm.name}: adapter shape {(lm.b.shape[0], lm.a.shape[1])} does not match the base layer "
                f"{(layer.out_features, layer.in_features)}: wrong base model?"
            )
        out.append((lm, layer))
    return out


class _LoraHook:
    """Forward hook adding ``scaling * B (A x)`` to a Linear's output (the unmerged adapter)."""

    def __init__(self, lm: LoraModule):
        self.lm = lm

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        a, b = self.lm.a.to(x.device, x.dtype), self.lm.b.to(x.device, x.dtype)
        return output + self.lm.scaling * nn.functional.linear(nn.functional.linear(x, a), b)


def attach_unmerged(model: nn.Module, modules: list[LoraModule]) -> list:
    """Apply the adapter through forward hooks; returns the handles (``.remove()`` each)."""
    return [layer.register_forward_hook(_LoraHook(lm)) for lm, layer in _targets(model, modules)]


@torch.no_grad()
def merge_into(model: nn.Module, modules: list[LoraModule]) -> int:
    """``W <- W + scaling * B @ A`` on every target Linear (fp32 arithmetic); returns the count.

    The merged weight is a new tensor swapped into the parameter (``param.data``), not written
    into the old storage: a freshly loaded model's weights are copy-on-write maps of the
    safetensors file, and writing into them page-faults every page (on SmolLM2 that copy was
    most of the merge's time). The Parameter object stays the same, so tied weights stay tied.
    """
    pairs = _targets(model, modules)
    for lm, layer in pairs:
        w = layer.weight
        merged = torch.addmm(w.float(), lm.b.to(w.device), lm.a.to(w.device), alpha=lm.scaling)  # (out, in)
        w.data = merged.to(w.dtype)
    return len(pairs)
