"""The VRAM preflight: will a training run fit on the card, and if not, what to change first.

Reads only the base model's ``config.json`` (:func:`read_model_shape`), estimates the peak with
:mod:`so8t.training.vram`, and walks the memory remedies in the runbook's order (:func:`next_memory_remedy`,
which the Prefect training task's CUDA out-of-memory retry applies too) until the estimate fits.
``so8t train --dry_run`` prints :meth:`FitReport.text`; the before-training checklist shows one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from so8t.config import TrainConfig
from so8t.errors import ConfigError, ModelError
from so8t.training.vram import GIB, ModelShape, VramEstimate, estimate_peak, resolved_precision, training_setup

#: Architecture numbers of models the preflight can estimate without their files (so8t/model_configs/).
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"
#: The shortest ``max_length`` the remedies go down to.
MIN_MAX_LENGTH = 64


def shipped_configs() -> list[str]:
    """Names that ``--base_model`` may give for a shipped config (``so8t/model_configs/<name>.json``)."""
    return sorted(p.stem for p in MODEL_CONFIGS.glob("*.json"))


def find_model_config(spec: str) -> Path:
    """The ``config.json`` that describes ``--base_model`` without loading its weights.

    ``spec`` may be a ``config.json`` file, a model directory (only its ``config.json`` is read), an
    embedded base (its prepared copy's config, else the shipped one), or a shipped name such as
    ``phi-3.5-mini-instruct``.

    Raises:
        ModelError: nothing that holds a config.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path / "config.json"
        raise ModelError(f"{path}: no config.json: the VRAM estimate reads the base model's config.json")
    from so8t.base_models import EMBEDDED, cache_root, verify_prepared

    shipped = MODEL_CONFIGS / f"{spec}.json"
    if spec in EMBEDDED:
        prepared = cache_root() / "base_models" / spec
        if verify_prepared(prepared):
            return prepared / "config.json"
        if shipped.is_file():
            return shipped
        raise ModelError(f"embedded base model {spec!r} is not prepared: run `so8t base prepare {spec}` first "
                         "(the VRAM estimate reads its config.json)")
    if "/" not in spec and shipped.is_file():
        return shipped
    raise ModelError(f"base model {spec!r} not found: pass a local model directory, its config.json, or one of "
                     f"{', '.join([*EMBEDDED, *shipped_configs()])} (nothing is downloaded)")


def read_model_shape(spec: str) -> ModelShape:
    """The architecture numbers of ``--base_model`` from its ``config.json``.

    Raises:
        ModelError: no config found.
        ConfigError: the file is unreadable, not JSON, not an object, or lacks a field (named).
    """
    path = find_model_config(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text: not a transformers config") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return ModelShape.from_config(cfg, str(path))


@dataclass(frozen=True)
class MemoryRemedy:
    """One step of the memory remedies: a name and the fields it changes (old, new)."""

    step: str
    changes: dict[str, tuple[Any, Any]]

    def describe(self) -> str:
        return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items())

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with this remedy's new values (validated)."""
        return TrainConfig(**{**cfg.model_dump(), **{k: new for k, (_, new) in self.changes.items()}})


def next_memory_remedy(cfg: TrainConfig) -> MemoryRemedy | None:
    """The next thing to change when training does not fit in GPU memory, or None when all are used.

    The runbook's order (トラブルシューティング / メモリ不足エラー), with gradient checkpointing second:
    1. batch size 1, the accumulation grown by the old batch size (the effective batch is unchanged;
       more accumulation alone would not lower the peak);
    2. gradient checkpointing (same loss and gradients, one more forward pass per layer);
    3. 4-bit loading;
    4. ``max_length`` halved, repeatedly, down to 64 tokens.
    """
    if cfg.batch_size > 1:
        return MemoryRemedy("batch-1+accumulation", {
            "batch_size": (cfg.batch_size, 1),
            "gradient_accumulation_steps": (cfg.gradient_accumulation_steps, cfg.gradient_accumulation_steps * cfg.batch_size),
        })
    if not cfg.gradient_checkpointing:
        return MemoryRemedy("gradient-checkpointing", {"gradient_checkpointing": (False, True)})
    if not cfg.load_in_4bit:
        return MemoryRemedy("4-bit", {"load_in_4bit": (False, True)})
    if cfg.max_length > MIN_MAX_LENGTH:
        return MemoryRemedy("max-length", {"max_length": (cfg.max_length, max(MIN_MAX_LENGTH, cfg.max_length // 2))})
    return None


@dataclass(frozen=True)
class FitReport:
    """The estimate for a configuration on a card, and the remedies (in order) until it fits."""

    cfg: TrainConfig
    shape: ModelShape
    estimate: VramEstimate
    card_bytes: int | None
    steps: tuple[tuple[MemoryRemedy, VramEstimate], ...] = ()
    native_bf16: bool = True

    @property
    def fits(self) -> bool | None:
        """Whether the estimate fits the card (None without a card)."""
        return None if self.card_bytes is None else self.estimate.total <= self.card_bytes

    @property
    def first(self) -> tuple[MemoryRemedy, VramEstimate] | None:
        """The first setting to change and the estimate after it (None when it fits or nothing is left)."""
        return self.steps[0] if self.steps else None

    def verdict(self, card_label: str = "") -> str:
        """One line: the estimate against the card (``card_label`` follows its size, e.g. "free"), and
        what to change first."""
        est = f"estimated peak {self.estimate.total / GIB:.1f} GiB"
        if self.card_bytes is None:
            return est
        card = f"{self.card_bytes / GIB:.1f} GiB" + (f" {card_label}" if card_label else "")
        if self.fits:
            return f"{est} vs {card}: fits"
        if not self.steps:
            return f"{est} vs {card}: does not fit, and every memory remedy is already applied"
        remedy, after = self.steps[0]
        return (f"{est} vs {card}: does not fit; change {remedy.describe()} first "
                f"({after.total / GIB:.1f} GiB{'' if after.total <= self.card_bytes else ', still too much'})")

    def text(self) -> str:
        """The dry-run report: model, settings, the breakdown, the card and the remedies."""
        c, s = self.cfg, self.shape
        prec = resolved_precision(c.precision, c.load_in_4bit, self.native_bf16)
        lines = [
            f"VRAM preflight for {s.source} ({s.model_type}: {s.layers} layers, hidden {s.hidden}, vocab {s.vocab}, "
            f"{(s.linear_params() + s.other_params()) / 1e9:.2f} B parameters)",
            f"settings: {'4-bit NF4' if c.load_in_4bit else 'bf16'} base, LoRA r={c.lora_r} on {c.lora_target_modules} "
            f"(layers {c.lora_layers}), gates on {c.so8t_layers}, batch {c.batch_size} x {c.max_length} tokens, "
            f"gradient checkpointing {'on' if c.gradient_checkpointing else 'off'}, precision {prec} ({c.precision}), "
            f"AdamW; gradient accumulation {c.gradient_accumulation_steps} (does not change the peak)",
            self.estimate.table(),
            *[f"note: {n}" for n in self.estimate.notes],
            f"card: {self.verdict()}" + ("" if self.card_bytes is not None else
                                         " (no card to compare with: pass --gpu_memory_gb, or run where CUDA is visible)"),
        ]
        for k, (remedy, after) in enumerate(self.steps[1:], start=2):
            lines.append(f"  then {k}. {remedy.describe()}: {after.total / GIB:.1f} GiB")
        lines.append("assumes every batch at max_length tokens, the LM head on every position, a CUDA GPU with bf16 "
                     "(Ampere or newer); formula, sources and limits: docs/vram.md")
        return "\n".join(lines)


def plan_fit(cfg: TrainConfig, shape: ModelShape, card_bytes: int | None, *, native_bf16: bool = True) -> FitReport:
    """Estimate ``cfg``; when it exceeds ``card_bytes``, apply the remedies in order until it fits.

    Raises:
        ModelError, ConfigError: settings this model cannot take (LoRA targets, layer selections).
    """
    est = estimate_peak(shape, training_setup(cfg, shape, native_bf16=native_bf16))
    steps: list[tuple[MemoryRemedy, VramEstimate]] = []
    if card_bytes is not None and est.total > card_bytes:
        current = cfg
        while (remedy := next_memory_remedy(current)) is not None:
            current = remedy.apply(current)
            after = estimate_peak(shape, training_setup(current, shape, native_bf16=native_bf16))
            steps.append((remedy, after))
            if after.total <= card_bytes:
                break
    return FitReport(cfg=cfg, shape=shape, estimate=est, card_bytes=card_bytes, steps=tuple(steps), native_bf16=native_bf16)


def visible_gpu() -> tuple[int | None, bool]:
    """Total memory of CUDA device 0 and whether it computes bf16, or ``(None, True)`` without one."""
    import torch

    if not torch.cuda.is_available():
        return None, True
    return int(torch.cuda.get_device_properties(0).total_memory), bool(torch.cuda.is_bf16_supported())
