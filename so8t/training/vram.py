"""Peak training VRAM, estimated from a model's ``config.json`` and the training settings.

Pure arithmetic (no torch): :class:`ModelShape` reads the architecture numbers, :class:`TrainingSetup`
says how a step holds its tensors (weight format, element sizes, LoRA, gates, batch, sequence,
gradient checkpointing, optimizer), :func:`estimate_peak` adds up the components. The formula, its
terms and their sources are in ``docs/vram.md``; ``tests/unit/test_vram.py`` checks it against
published measurements and against the tensors torch really saves on a tiny model.

The activation term counts, per decoder layer and token, each tensor that autograd saves for the
backward pass of a Hugging Face Llama/Phi-3 decoder layer with peft LoRA and SO(8) gates (the
per-operation method of Korthikanti et al. 2022, sec. 4.1, applied to this layer instead of GPT's):
SDPA stores no ``heads x seq x seq`` score matrix, frozen Linear layers keep no input, and a LoRA
adapter keeps its (dropped-out) input. Gradient accumulation does not appear anywhere: micro-batches
run one after another, so the peak is that of one micro-batch (``docs/vram.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from so8t.errors import ConfigError

GIB = 2**30

WeightFormat = Literal["nf4-dq", "nf4", "bf16", "fp32"]
#: Storage bits per weight of a Linear layer. NF4: 4-bit codes plus one float32 absmax per block of 64;
#: with double quantization the absmax is 8-bit with one float32 constant per 256 blocks (QLoRA, sec. 3).
BITS_PER_WEIGHT: dict[str, float] = {"nf4-dq": 4 + 8 / 64 + 32 / (64 * 256), "nf4": 4 + 32 / 64, "bf16": 16, "fp32": 32}

Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]
#: Optimizer states per trainable parameter, in units of the parameter's own size (AdamW: two moments,
#: SGD with momentum: one) or, for the 8-bit optimizers, in bytes (HF "Anatomy of Model's Memory").
_STATES_PER_PARAM: dict[str, tuple[float, bool]] = {
    "adamw": (2, True), "sgd": (1, True), "adamw_8bit": (2, False), "paged_adamw_8bit": (2, False)}

#: Bytes of the CUDA context (kernels, cuBLAS workspaces) outside torch's allocator; see docs/vram.md.
CUDA_CONTEXT_BYTES = 512 * 2**20
#: Allocator slack (reserved but unallocated: rounding, fragmentation) as a fraction of the allocated peak.
ALLOCATOR_SLACK = 0.05

#: ``model_type`` values whose decoder layer has fused ``qkv_proj`` and ``gate_up_proj`` (Phi-3).
_FUSED_TYPES = {"phi3"}
#: Llama-layout ``model_type`` values this estimate knows; others are estimated as Llama-like, with a note.
_KNOWN_TYPES = {"llama", "mistral", "qwen2", "phi3"}


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of a decoder-only model, from its ``config.json``."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    qkv_bias: bool = False
    model_type: str = "llama"
    source: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], source: str) -> ModelShape:
        """Read a Hugging Face ``config.json`` (a ``text_config`` inside it when present).

        Raises:
            ConfigError: ``<source>: field '<name>': <problem>``, every problem in one line.
        """
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{source}: expected a JSON object (a Hugging Face config.json)")
        text = cfg.get("text_config")
        cfg = text if isinstance(text, Mapping) else cfg
        errors: list[str] = []

        def number(name: str, default: int | None = None) -> int:
            value = cfg.get(name, default)
            if value is None:
                errors.append(f"field '{name}': missing")
                return 1
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"field '{name}': {value!r} is not a positive integer")
                return 1
            return value

        hidden, heads = number("hidden_size"), number("num_attention_heads")
        values = dict(hidden=hidden, layers=number("num_hidden_layers"), intermediate=number("intermediate_size"),
                      heads=heads, kv_heads=number("num_key_value_heads", heads),
                      head_dim=number("head_dim", max(hidden // max(heads, 1), 1)), vocab=number("vocab_size"))
        if errors:
            raise ConfigError(f"{source}: " + "; ".join(errors))
        model_type = str(cfg.get("model_type", "llama"))
        return cls(**values, tied=bool(cfg.get("tie_word_embeddings", False)),
                   fused_qkv=model_type in _FUSED_TYPES, fused_gate_up=model_type in _FUSED_TYPES,
                   qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
                   model_type=model_type, source=source)

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """``name -> (in_features, out_features)`` of one decoder layer's Linear layers."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_width, self.kv_width
        attn = {"qkv_proj": (h, q + 2 * kv)} if self.fused_qkv else {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv)}
        mlp = {"gate_up_proj": (h, 2 * i)} if self.fused_gate_up else {"gate_proj": (h, i), "up_proj": (h, i)}
        return {**attn, "o_proj": (q, h), **mlp, "down_proj": (i, h)}

    def linear_params(self) -> int:
        """Weights of every decoder layer's Linear layers (what 4-bit loading quantizes)."""
        return self.layers * sum(a * b for a, b in self.linears().values())

    def other_params(self) -> int:
        """Parameters that stay unquantized: embeddings, LM head (unless tied), norms, biases."""
        embed = self.vocab * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        norms = (2 * self.layers + 1) * self.hidden
        bias = self.layers * (self.q_width + 2 * self.kv_width) if self.qkv_bias else 0
        return embed + head + norms + bias

    @property
    def known(self) -> bool:
        return self.model_type in _KNOWN_TYPES


@dataclass(frozen=True)
class Dtypes:
    """Bytes per element of each kind of tensor a training step holds (see docs/vram.md, "Element sizes").

    ``lora_input`` is the dtype a LoRA adapter casts its input to (peft does so outside autocast);
    ``None`` means it keeps the input's own dtype (under autocast). ``mask`` is a dropout mask
    element: CUDA's fused dropout keeps a bool mask, the CPU kernel keeps the scaled noise tensor.
    """

    residual: int
    norm_saved: int
    matmul: int
    attention: int
    lora_input: int | None
    mask: int
    logits: int


@dataclass(frozen=True)
class TrainingSetup:
    """How one training step holds its tensors: the estimate's inputs besides the model shape.

    :func:`training_setup` makes the one ``so8t train`` runs; the tests build others (published runs).

    Attributes:
        batch_size, seq_len: One micro-batch (``seq_len``: the longest example, every row padded to it).
        weights: Storage of the decoder's Linear weights; ``other_weight_bytes``: of everything else.
        dtypes: Element sizes of the kept tensors.
        lora_r, lora_targets, lora_layers, lora_dropout: The adapters (targets: Linear names per layer).
        adapter_bytes: Element size of LoRA parameters and gradients (float32 in peft by default).
        optimizer: Decides the optimizer states per trainable parameter.
        gated_layers: Layers with an SO(8) gate.
        gradient_checkpointing: Keep only each layer's input.
        gradient_accumulation_steps: Recorded for the report; it does not change the peak.
        logits_rows: Positions the LM head runs on (None: every token).
        loss_bytes: Bytes per logit at the end of forward and the start of backward (None:
            transformers' causal-LM loss).
        pet: The PET term is on (its second differences are kept).
        padded: Batches carry an attention mask (padding).
        cuda: A CUDA GPU (kernel layouts, CUDA context); False for the CPU measurements.
    """

    batch_size: int
    seq_len: int
    weights: WeightFormat
    other_weight_bytes: int
    dtypes: Dtypes
    lora_r: int
    lora_targets: tuple[str, ...]
    lora_layers: tuple[int, ...]
    lora_dropout: float
    adapter_bytes: int = 4
    optimizer: Optimizer = "adamw"
    gated_layers: tuple[int, ...] = ()
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1
    logits_rows: int | None = None
    loss_bytes: tuple[float, float] | None = None
    pet: bool = False
    padded: bool = False
    cuda: bool = True

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class VramEstimate:
    """The estimate: named components in bytes, the allocated peak and the total with CUDA overhead."""

    components: tuple[tuple[str, int], ...]
    allocated: int
    total: int
    peak_phase: str
    notes: tuple[str, ...] = field(default=())

    def part(self, name: str) -> int:
        """Bytes of one component (0 when absent)."""
        return sum(b for n, b in self.components if n == name)

    def table(self) -> str:
        """The breakdown as aligned text, in GiB."""
        width = max(len(n) for n, _ in self.components) + 2
        rows = [f"  {n:<{width}}{b / GIB:8.3f} GiB" for n, b in self.components]
        rows.append(f"  {'allocated peak (' + self.peak_phase + ')':<{width}}{self.allocated / GIB:8.3f} GiB")
        rows.append(f"  {'total with CUDA context and allocator slack':<{width}}{self.total / GIB:8.3f} GiB")
        return "\n".join(rows)


def lora_params(shape: ModelShape, setup: TrainingSetup) -> int:
    """Trainable LoRA parameters: ``r * (in + out)`` per adapted Linear in the adapted layers."""
    per_layer = sum(a + b for name, (a, b) in shape.linears().items() if name in setup.lora_targets)
    return setup.lora_r * per_layer * len(setup.lora_layers)


def gate_params(shape: ModelShape, setup: TrainingSetup) -> int:
    """Gate generators: 28 per 8x8 block of the ``o_proj`` input, per gated layer (so8t/training/rotation.py)."""
    return (shape.q_width // 8) * 28 * len(setup.gated_layers)


def _states_bytes(params: int, param_bytes: int, optimizer: str) -> float:
    count, relative = _STATES_PER_PARAM[optimizer]
    return params * count * (param_bytes if relative else 1)


def static_components(shape: ModelShape, setup: TrainingSetup) -> list[tuple[str, int]]:
    """Memory held through the whole step: weights, trainable parameters, gradients, optimizer states."""
    n_lora, n_gate = lora_params(shape, setup), gate_params(shape, setup)
    kind = "4-bit NF4" if setup.weights.startswith("nf4") else setup.weights
    out = [
        (f"base weights: decoder Linear layers ({kind})", round(shape.linear_params() * BITS_PER_WEIGHT[setup.weights] / 8)),
        ("base weights: embeddings, LM head, norms", shape.other_params() * setup.other_weight_bytes),
        ("LoRA parameters", n_lora * setup.adapter_bytes),
        ("LoRA gradients", n_lora * setup.adapter_bytes),
        (f"LoRA optimizer states ({setup.optimizer})", round(_states_bytes(n_lora, setup.adapter_bytes, setup.optimizer))),
    ]
    if n_gate:  # float32 generators, float32 gradients, optimizer states
        out.append(("SO(8) gates: parameters, gradients, optimizer states",
                    round(n_gate * 8 + _states_bytes(n_gate, 4, setup.optimizer))))
    return out


def _lora_saved(names: tuple[str, ...], width: int, in_bytes: int, setup: TrainingSetup, grad_in: bool,
                input_kept: bool = False) -> dict[str, float]:
    """Per-token bytes that the LoRA adapters on ``names`` (Linear layers sharing one input) keep.

    ``lora_A`` keeps its input: the dropout output (one per adapter), or, without dropout, the input
    itself (nothing new when another operation keeps it already: ``input_kept``), unless peft casts
    it (outside autocast, to the adapter dtype: one copy per adapter). Dropout also keeps its mask,
    when the input needs a gradient. ``lora_B`` keeps ``lora_A``'s output.
    """
    hit = [n for n in names if n in setup.lora_targets]
    if not hit:
        return {}
    d = setup.dtypes
    kept = in_bytes if d.lora_input is None else d.lora_input
    fresh = setup.lora_dropout > 0 or kept != in_bytes
    copies = len(hit) if fresh else (0 if input_kept else 1)
    out = {"LoRA inputs": copies * width * kept, "LoRA A outputs": len(hit) * setup.lora_r * kept}
    if setup.lora_dropout > 0 and grad_in:
        out["LoRA dropout masks"] = len(hit) * width * d.mask
    return out


def layer_saved_bytes(shape: ModelShape, setup: TrainingSetup, layer: int, first_in_graph: bool) -> dict[str, float]:
    """Bytes per token that one decoder layer keeps for its backward pass, by kind of tensor.

    Frozen Linear layers keep nothing (their weight needs no gradient, so autograd saves no input).
    The first layer with a backward pass gets an input that needs no gradient: its input norm and its
    attention adapters' dropout masks are not kept.
    """
    d, h, i, q, kv = setup.dtypes, shape.hidden, shape.intermediate, shape.q_width, shape.kv_width
    adapted, gated = layer in setup.lora_layers, layer in setup.gated_layers
    parts: dict[str, float] = {}

    def add(more: dict[str, float]) -> None:
        for k, v in more.items():
            parts[k] = parts.get(k, 0.0) + v

    add({"RMSNorm inputs": (1 if first_in_graph else 2) * h * d.norm_saved})
    attn_in = ("qkv_proj",) if shape.fused_qkv else ("q_proj", "k_proj", "v_proj")
    if adapted:
        add(_lora_saved(attn_in, h, d.residual, setup, grad_in=not first_in_graph))
    repeat = setup.padded and shape.kv_heads < shape.heads  # a mask rules out SDPA's GQA path: k, v repeated
    k_w = q if repeat else kv
    # SDPA keeps q, k, v, its output and logsumexp. Phi-3's v is a view of the fused qkv output, which
    # CUDA kernels keep whole; the CPU kernel (and an autocast cast or repeat_kv) keeps a copy.
    holds_qkv = shape.fused_qkv and setup.cuda and d.attention == d.matmul and not repeat
    v = (q + 2 * kv) * d.matmul if holds_qkv else k_w * d.attention
    add({"attention q, k, v, output": (2 * q + k_w) * d.attention + v + shape.heads * 4})
    if setup.padded:
        add({"attention mask (padded batch)": setup.seq_len * d.attention})
    # o_proj's input is SDPA's output itself when the kernel writes it token-major (CUDA; on the CPU it
    # follows q's layout: token-major for separate q_proj, head-major for Phi-3's slice of qkv)
    shared = setup.cuda or not shape.fused_qkv
    if gated and not shared:  # the gate's einsum keeps a view of its input, a copy of SDPA's output here
        add({"SO(8) gate input": q * d.attention})
    if adapted:
        add(_lora_saved(("o_proj",), q, d.attention, setup, grad_in=True, input_kept=shared and not gated))
        add(_lora_saved(("gate_up_proj",) if shape.fused_gate_up else ("gate_proj", "up_proj"), h, d.residual,
                        setup, grad_in=True))
    add({"MLP gate, up, activation": 3 * i * d.matmul})
    if adapted:
        add(_lora_saved(("down_proj",), i, d.matmul, setup, grad_in=True))
    return parts


def graph_layers(shape: ModelShape, setup: TrainingSetup) -> list[int]:
    """Layers with a backward pass: from the lowest adapted or gated layer up to the last."""
    chosen = [*setup.lora_layers, *setup.gated_layers]
    return list(range(min(chosen), shape.layers)) if chosen else []


def _loss_bytes(setup: TrainingSetup) -> tuple[float, float]:
    """Bytes per logit element at the end of the forward pass and at the start of the backward pass.

    transformers' causal-LM loss casts the logits to float32 and takes ``log_softmax`` (kept for the
    backward pass); its backward adds the gradient of the log-probabilities and of the logits (float32).
    """
    if setup.loss_bytes is not None:
        return setup.loss_bytes
    lg = setup.dtypes.logits
    return lg + (0 if lg == 4 else 4) + 4, 12.0


def working_set(shape: ModelShape, setup: TrainingSetup) -> int:
    """Transient bytes inside one layer: the widest Linear's base and LoRA outputs before they are
    summed, plus, for 4-bit weights, that Linear's weight dequantized to bf16."""
    widest = max(shape.linears().values(), key=lambda io: io[1])
    dequant = widest[0] * widest[1] * 2 if setup.weights.startswith("nf4") else 0
    return setup.tokens * 2 * widest[1] * setup.dtypes.matmul + dequant


def dynamic_phases(shape: ModelShape, setup: TrainingSetup) -> tuple[list[tuple[str, int]], dict[str, tuple[str, int]]]:
    """What a step holds besides the static memory: the kept activations (components), and per phase of
    the step the extra bytes on top of them (name, bytes)."""
    T, h, d = setup.tokens, shape.hidden, setup.dtypes
    layers = graph_layers(shape, setup)
    per_layer = [T * sum(layer_saved_bytes(shape, setup, ell, ell == layers[0]).values()) for ell in layers]
    final = T * h * (d.norm_saved + (4 if setup.pet else 0))  # final norm input; PET's second differences
    rows = setup.logits_rows or T
    fwd, bwd = (rows * shape.vocab * b for b in _loss_bytes(setup))
    work = working_set(shape, setup)
    if setup.gradient_checkpointing:
        kept = [(f"checkpointed layer inputs ({len(layers)} layers)", len(layers) * T * h * d.residual)]
        inside = ("one layer recomputed, and its working set", round(max(per_layer, default=0)) + work)
        hidden = 0  # the hidden states PET reads are the checkpointed inputs
    else:
        kept = [(f"activations kept for backward ({len(layers)} layers)", round(sum(per_layer)))]
        inside = ("working set inside a layer", work)
        hidden = T * h * d.residual * (len(layers) + 1) if setup.pet and d.residual != d.norm_saved else 0
    kept.append(("final norm input" + (", PET second differences" if setup.pet else ""), final))
    phases = {
        "start of backward": ("logits and loss: log-probabilities and their gradients", round(bwd)),
        "end of forward": ("logits and loss" + (", hidden states kept for PET" if hidden else ""), round(fwd) + hidden),
        "inside a layer": inside,
    }
    return kept, phases


def estimate_peak(shape: ModelShape, setup: TrainingSetup) -> VramEstimate:
    """Peak training memory of one micro-batch: static memory plus the largest phase (docs/vram.md).

    Returns:
        Components that add up to the allocated peak, and the total with the CUDA context and the
        allocator's slack (CUDA only).
    """
    static = static_components(shape, setup)
    kept, phases = dynamic_phases(shape, setup)
    phase, (extra_name, extra) = max(phases.items(), key=lambda kv: kv[1][1])
    components = (*static, *kept, (extra_name, extra))
    allocated = sum(b for _, b in components)
    total = allocated + (CUDA_CONTEXT_BYTES + round(ALLOCATOR_SLACK * allocated) if setup.cuda else 0)
    notes = [] if shape.known else [f"model_type {shape.model_type!r}: estimated as a Llama-like decoder layer"]
    return VramEstimate(components=components, allocated=allocated, total=total, peak_phase=phase, notes=tuple(notes))


def lora_targets(shape: ModelShape, spec: str) -> tuple[str, ...]:
    """``lora_target_modules`` resolved against this layout (as :func:`so8t.training.train.resolve_lora_targets`).

    Raises:
        ModelError: a name that no decoder layer has.
    """
    from so8t.errors import ModelError

    names = sorted(shape.linears())
    if spec.strip() == "all-linear":
        return tuple(names)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ModelError(f"lora_target_modules {unknown} do not exist in this model: choose from {', '.join(names)}")
    return tuple(wanted)


def resolved_precision(precision: str, load_in_4bit: bool, native_bf16: bool = True) -> str:
    """``TrainConfig.precision`` on a CUDA GPU, by the rule of :func:`so8t.training.train.resolve_precision`."""
    if precision != "auto":
        return precision
    return "bf16" if not load_in_4bit and native_bf16 else "fp32"


def cuda_dtypes(load_in_4bit: bool, autocast: bool) -> Dtypes:
    """Element sizes of a step on a CUDA GPU as ``so8t train`` runs it (docs/vram.md, "Element sizes").

    4-bit: ``prepare_model_for_kbit_training`` makes embeddings, norms and LM head float32 and
    bitsandbytes returns each output in its input's dtype, so without autocast the step runs in
    float32. Otherwise the base is loaded in bf16 (``so8t.training.train.load_base``). HF's RMSNorm always
    keeps a float32 copy of its input; outside autocast peft casts a LoRA input to float32.
    """
    if load_in_4bit:
        return Dtypes(residual=4, norm_saved=4, matmul=4, attention=2 if autocast else 4,
                      lora_input=None if autocast else 4, mask=1, logits=2 if autocast else 4)
    return Dtypes(residual=2, norm_saved=4, matmul=2, attention=2, lora_input=None if autocast else 4, mask=1, logits=2)


def training_setup(cfg: Any, shape: ModelShape, *, native_bf16: bool = True) -> TrainingSetup:
    """The setup that ``so8t train`` with ``cfg`` (a :class:`~so8t.config.TrainConfig`) runs on a CUDA GPU.

    Every example is taken at ``max_length`` tokens (the longest a batch can be), the LM head on every
    position (the sparse head may use fewer), and a batch of more than one example as padded.

    Raises:
        ModelError: LoRA targets or layer selections that this model does not have.
        ConfigError: a selection that leaves no layer to adapt.
    """
    from so8t.training.layer_spec import resolve_layers

    lora_layers = resolve_layers(cfg.lora_layers, shape.layers, "lora_layers")
    if not lora_layers:
        raise ConfigError("lora_layers 'none' leaves nothing to adapt: give 'all', 'top:K' or layer indices")
    autocast = resolved_precision(cfg.precision, cfg.load_in_4bit, native_bf16) == "bf16"
    return TrainingSetup(
        batch_size=cfg.batch_size, seq_len=cfg.max_length, weights="nf4-dq" if cfg.load_in_4bit else "bf16",
        other_weight_bytes=4 if cfg.load_in_4bit else 2, dtypes=cuda_dtypes(cfg.load_in_4bit, autocast),
        lora_r=cfg.lora_r, lora_targets=lora_targets(shape, cfg.lora_target_modules), lora_layers=tuple(lora_layers),
        lora_dropout=cfg.lora_dropout, gated_layers=tuple(resolve_layers(cfg.so8t_layers, shape.layers)),
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        pet=cfg.pet_lambda > 0, padded=cfg.batch_size > 1, cuda=True,
    )


def layer_weight_params(shape: ModelShape) -> int:
    """Parameters of one decoder layer: its Linear weights, two norms and any q/k/v biases."""
    bias = shape.q_width + 2 * shape.kv_width if shape.qkv_bias else 0
    return sum(a * b for a, b in shape.linears().values()) + 2 * shape.hidden + bias


def root_unit_params(shape: ModelShape) -> int:
    """Parameters outside the decoder layers: embeddings, LM head (unless tied), final norm."""
    return shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden


def estimate_fsdp_peak(shape: ModelShape, setup: TrainingSetup, world: int, prefetched_layers: int = 2) -> VramEstimate:
    """Peak memory of one GPU when FSDP fully shards the run over ``world`` GPUs (docs/multi-gpu.md).

    ``deployments/accelerate/fsdp-8b.yaml``'s layout: one FSDP unit per decoder layer, the rest (embeddings,
    final norm, LM head) in the root unit. Every parameter, gradient and optimizer state that
    :func:`static_components` counts is held as a ``1/world`` shard. On top, while a step runs, a GPU holds
    full copies of what is all-gathered: the root unit (FSDP2 keeps the root gathered between forward and
    backward) and ``prefetched_layers`` decoder layers (the one computing and the next one, prefetched), in
    the weights' dtype, with their LoRA parameters. Activations are not sharded: each GPU runs its own
    micro-batch (:func:`dynamic_phases`, the same as one GPU). Not counted: NCCL's buffers and the
    gradient reduce-scatter's unsharded LoRA gradients of one layer (a few MiB).

    Raises:
        ConfigError: ``world`` below 1, or 4-bit weights (FSDP shards bf16 or fp32 tensors here).
    """
    if world < 1:
        raise ConfigError(f"FSDP over {world} GPUs: give 1 or more")
    if setup.weights.startswith("nf4"):
        raise ConfigError("FSDP plan: 4-bit (NF4) weights are not sharded by this estimate: plan with a bf16 base")
    weight_bytes = BITS_PER_WEIGHT[setup.weights] / 8
    static = [(f"{name} (1/{world} shard)", round(b / world)) for name, b in static_components(shape, setup)]
    per_layer_lora = lora_params(shape, setup) // max(len(setup.lora_layers), 1)
    gathered = [
        ("all-gathered root unit: embeddings, LM head, final norm", root_unit_params(shape) * setup.other_weight_bytes),
        (f"all-gathered decoder layers ({prefetched_layers}: computing and prefetched), with their LoRA",
         round(prefetched_layers * (layer_weight_params(shape) * weight_bytes + per_layer_lora * setup.adapter_bytes))),
    ]
    kept, phases = dynamic_phases(shape, setup)
    phase, (extra_name, extra) = max(phases.items(), key=lambda kv: kv[1][1])
    components = (*static, *gathered, *kept, (extra_name, extra))
    allocated = sum(b for _, b in components)
    total = allocated + (CUDA_CONTEXT_BYTES + round(ALLOCATOR_SLACK * allocated) if setup.cuda else 0)
    notes = [] if shape.known else [f"model_type {shape.model_type!r}: estimated as a Llama-like decoder layer"]
    return VramEstimate(components=components, allocated=allocated, total=total, peak_phase=phase, notes=tuple(notes))
