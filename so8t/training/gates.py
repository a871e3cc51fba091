"""Attach SO(8) rotation gates to the input of every gated attention ``o_proj``.

Design (see ``docs/gate-decision.md`` for why not peft's OFT tuner): each gated attention module
gets a child ``so8t_gate`` (:class:`SO8TGate`) that owns float32 generators of shape
``(d/8, 28)``, and a forward pre-hook on its ``o_proj`` that rotates the concatenated heads before
the projection. Nothing in the model is renamed or replaced, so a LoRA adapter on the same
``o_proj`` (peft, 4-bit or not) keeps its own keys, and the gate rotates the input of the whole
LoRA-equipped projection: ``o_proj(R x) = (W + s B A) R x``. Bake folds exactly that.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from so8t.errors import ModelError
from so8t.training.layer_spec import resolve_layers  # noqa: F401 - re-exported: callers import it from here
from so8t.training.rotation import BLOCK, N_FREE, RotationMap, apply_block_rotation, rotations_from_params

logger = logging.getLogger(__name__)

GATES_FILE = "so8t_gates.safetensors"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn$")


class SO8TGate(nn.Module):
    """The trainable part of one layer's gate: float32 skew generators, zero at init.

    Args:
        width: ``o_proj`` input width ``d`` (``n_heads * head_dim``), divisible by 8.
        mapping: ``"expm"`` or ``"cayley"``.
        device: Where the generators live.
    """

    def __init__(self, width: int, mapping: RotationMap = "expm", device: torch.device | None = None):
        super().__init__()
        self.width = width
        self.mapping = mapping
        # float32 always, even when the base model is fp16/bf16/4-bit.
        self.generators = nn.Parameter(torch.zeros(width // BLOCK, N_FREE, dtype=torch.float32, device=device))

    def rotations(self) -> torch.Tensor:
        """``(d/8, 8, 8)`` float32 rotations of the current generators.

        Inside a model forward the rotations of all gates are computed together, once (see
        :class:`_RotationCache`); outside one they are computed for this gate alone.
        """
        cache: _RotationCache | None = self.__dict__.get("_cache")
        if cache is not None:
            return cache.get(self)
        return rotations_from_params(self.generators, self.mapping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape ``(..., d)`` block by block."""
        return apply_block_rotation(x, self.rotations())


class _RotationCache:
    """All gates' rotations from one batched ``expm`` per model forward.

    Computing 30 layers' rotations in one ``(30*d/8, 8, 8)`` call instead of 30 small ones
    matters on a GPU, where a small model's step is bound by kernel launches. A forward pre-hook
    on the model clears the cache and one on its decoder fills it (:meth:`prefetch`), so every
    forward (and every optimizer step) sees the current generators; the cached tensors carry the
    autograd graph of that forward.
    """

    def __init__(self, mapping: RotationMap):
        self.mapping = mapping
        self.gates: list[SO8TGate] = []
        self.value: list[torch.Tensor] | None = None
        self.key: tuple | None = None

    def add(self, gate: SO8TGate) -> None:
        gate.__dict__["_slot"] = len(self.gates)
        gate.__dict__["_cache"] = self
        self.gates.append(gate)

    def clear(self, *_args, **_kwargs) -> None:
        self.value = None

    def prefetch(self, *_args, **_kwargs) -> None:
        """Clear, then compute every gate's rotation now when gradients are recorded.

        Registered on the module whose forward runs the decoder layers, so the rotations (and their
        autograd graph) are made outside every layer. With gradient checkpointing a layer's forward
        runs again in the backward pass; computed lazily inside the first gated layer, the rotations
        would be saved by that layer's checkpoint and the recomputation, which finds them cached, would
        save fewer tensors than the forward did (torch refuses that).
        """
        self.value = None
        if self.gates and torch.is_grad_enabled():
            self.get(self.gates[0])

    def get(self, gate: SO8TGate) -> torch.Tensor:
        # Also recompute when a generator changed in place or the grad mode differs, so a call
        # outside a forward never sees stale rotations or a graph-less cache.
        key = (torch.is_grad_enabled(), *(g.generators._version for g in self.gates))
        if self.value is None or key != self.key:
            self.key = key
            params = torch.cat([g.generators for g in self.gates], 0)  # (sum of d/8, 28)
            rots = rotations_from_params(params, self.mapping)  # (sum of d/8, 8, 8)
            self.value = list(rots.split([g.generators.shape[0] for g in self.gates], 0))
        return self.value[gate.__dict__["_slot"]]

    def extra_repr(self) -> str:
        return f"width={self.width}, blocks={self.width // BLOCK}, mapping={self.mapping}"


class _GateHook:
    """Forward pre-hook on ``o_proj`` that rotates its input with ``gate``.

    A callable object (not a closure) so that ``copy.deepcopy(model)`` gives the copy's hook the
    copy's gate.
    """

    def __init__(self, gate: SO8TGate):
        self.gate = gate

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.gate(args[0]), *args[1:])


@dataclass(frozen=True)
class GatedLayer:
    """Where one gate sits: layer index and the attention module holding ``o_proj``."""

    index: int
    attention: nn.Module


def find_attention_layers(model: nn.Module) -> list[GatedLayer]:
    """Every decoder layer's attention module that has an ``o_proj`` child, by layer index.

    Works on plain HF models and on peft-wrapped ones.

    Raises:
        ModelError: when the architecture has no attention ``o_proj``.
    """
    found: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        m = _LAYER_RE.search(name)
        if m and hasattr(module, "o_proj"):
            found.setdefault(int(m.group(1)), module)
    if not found:
        arch = type(_unwrap(model)).__name__
        raise ModelError(
            f"model {arch} has no attention o_proj: SO8T gates sit on the input of each layer's "
            f"self_attn.o_proj (Llama, Phi-3, Qwen2, Mistral, ...); use such an architecture"
        )
    return [GatedLayer(i, found[i]) for i in sorted(found)]


def _unwrap(model: nn.Module) -> nn.Module:
    inner = model
    while hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def _forward_entries(model: nn.Module) -> list[nn.Module]:
    """The modules whose forward starts a pass over the layers: the model, and its decoder.

    The rotation cache is cleared at either, so a caller that runs the decoder alone (the training
    loss that applies the LM head only where labels are) also sees fresh rotations.
    """
    root = _unwrap(model)
    out = [root]
    get_decoder = getattr(root, "get_decoder", None)
    if get_decoder is not None:
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
        if isinstance(decoder, nn.Module) and decoder is not root:
            out.append(decoder)
    return out


def head_geometry(model: nn.Module) -> tuple[int, int]:
    """``(n_heads, head_dim)`` from the model config."""
    cfg = _unwrap(model).config
    cfg = getattr(cfg, "text_config", None) or cfg
    n_heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return n_heads, int(head_dim)


def attach_gates(model: nn.Module, layers: str | Sequence[int] = "all", mapping: RotationMap = "expm") -> list[int]:
    """Attach a zero-initialised gate to each selected layer's ``o_proj`` input.

    Args:
        model: Any HF causal LM (plain or peft-wrapped) whose attention has ``o_proj``.
        layers: ``"all"`` or layer indices.
        mapping: Rotation map, ``"expm"`` (default) or ``"cayley"``.

    Returns:
        The gated layer indices.

    Raises:
        ModelError: no ``o_proj``, width or head_dim not divisible by 8, gates already attached.
    """
    all_layers = find_attention_layers(model)
    by_index = {g.index: g for g in all_layers}
    chosen = resolve_layers(layers, max(by_index) + 1)
    n_heads, head_dim = head_geometry(model)
    width = n_heads * head_dim
    errors = []
    if width % BLOCK:
        errors.append(
            f"hidden width {width} (n_heads {n_heads} * head_dim {head_dim}) is not divisible by {BLOCK}: "
            f"SO(8) blocks need n_heads*head_dim % 8 == 0"
        )
    if head_dim % BLOCK:
        errors.append(f"head_dim {head_dim} is not divisible by {BLOCK}: an 8-block must not cross a head boundary")
    if errors:
        raise ModelError("; ".join(errors))
    cache = _RotationCache(mapping)
    for i in chosen:
        attn = by_index[i].attention
        if hasattr(attn, "so8t_gate"):
            raise ModelError(f"layer {i} already has an SO8T gate: attach gates once")
        o_proj = attn.o_proj
        in_features = getattr(o_proj, "in_features", None)
        if in_features is not None and in_features != width:
            raise ModelError(f"layer {i} o_proj takes {in_features} inputs but n_heads*head_dim is {width}")
        device = next(attn.parameters()).device
        gate = SO8TGate(width, mapping, device=device)
        attn.add_module("so8t_gate", gate)
        cache.add(gate)
        o_proj.register_forward_pre_hook(_GateHook(gate))
    if chosen:
        entries = _forward_entries(model)
        for entry in entries[:-1]:
            entry.register_forward_pre_hook(cache.clear)
        entries[-1].register_forward_pre_hook(cache.prefetch)  # the decoder, which runs the layers
    logger.info("attached SO8T gates to %d layer(s): %s (width %d, %d blocks each)", len(chosen), chosen, width, width // BLOCK)
    return chosen


def iter_gates(model: nn.Module) -> Iterable[tuple[int, SO8TGate]]:
    """``(layer index, gate)`` for every attached gate, in layer order."""
    for layer in find_attention_layers(model):
        gate = getattr(layer.attention, "so8t_gate", None)
        if isinstance(gate, SO8TGate):
            yield layer.index, gate


def remove_gates(model: nn.Module) -> list[int]:
    """Detach every gate (hooks and parameters); returns the layers that had one."""
    removed = []
    for layer in find_attention_layers(model):
        gate = getattr(layer.attention, "so8t_gate", None)
        if not isinstance(gate, SO8TGate):
            continue
        index = layer.index
        hooks = layer.attention.o_proj._forward_pre_hooks
        for key in [k for k, h in hooks.items() if isinstance(h, _GateHook) and h.gate is gate]:
            del hooks[key]
        del layer.attention._modules["so8t_gate"]
        gate.__dict__.pop("_cache", None)
        removed.append(index)
    for entry in _forward_entries(model):
        hooks = entry._forward_pre_hooks
        for key in [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None), _RotationCache)]:
            del hooks[key]
    return removed


def gate_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Generators by ``layers.{i}.generators``, detached float32 CPU copies."""
    return {f"layers.{i}.generators": g.generators.detach().float().cpu().contiguous() for i, g in iter_gates(model)}


def save_gates(model: nn.Module, directory: str | Path) -> Path:
    """Write ``so8t_gates.safetensors`` (generators + metadata) into ``directory``.

    Raises:
        ModelError: when the model has no gates.
    """
    gates = list(iter_gates(model))
    if not gates:
        raise ModelError("model has no SO8T gates to save")
    path = Path(directory) / GATES_FILE
    meta = {
        "format": "so8t-gates-v1",
        "block": str(BLOCK),
        "mapping": gates[0][1].mapping,
        "width": str(gates[0][1].width),
        "layers": ",".join(str(i) for i, _ in gates),
    }
    tmp = path.with_suffix(".tmp")
    save_file(gate_state(model), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_gates(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a gates file (a file or a directory holding one).

    Raises:
        ModelError: missing file or wrong format.
    """
    p = Path(path)
    if p.is_dir():
        p = p / GATES_FILE
    if not p.is_file():
        raise ModelError(f"{p}: no SO8T gates file ({GATES_FILE}); was the adapter trained with so8t train?")
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != "so8t-gates-v1":
        raise ModelError(f"{p}: not an SO8T gates file (format {meta.get('format')!r}, expected 'so8t-gates-v1')")
    return load_file(str(p)), meta


def load_gates(model: nn.Module, path: str | Path, attach: bool = True) -> list[int]:
    """Load generators into the model's gates, attaching them first when ``attach``.

    Returns:
        The gated layer indices.

    Raises:
        ModelError: layer or shape mismatch.
    """
    tensors, meta = read_gates(path)
    layers = [int(i) for i in meta["layers"].split(",") if i]
    if attach:
        attach_gates(model, layers, mapping=meta.get("mapping", "expm"))  # type: ignore[arg-type]
    have = dict(iter_gates(model))
    if sorted(have) != layers:
        raise ModelError(f"{path}: gates for layers {layers} but the model has gates on {sorted(have)}")
    with torch.no_grad():
        for i in layers:
            t = tensors[f"layers.{i}.generators"]
            g = have[i].generators
            if t.shape != g.shape:
                raise ModelError(f"{path}: layer {i} generators have shape {tuple(t.shape)}, model needs {tuple(g.shape)}")
            g.copy_(t.to(g.device, torch.float32))
    return layers
