"""Stage configurations: frozen pydantic models, one per stage.

Every field has a description: ``so8t <stage> --help`` and the Prefect UI's forms read them.
Cross-field problems are gathered into one :class:`~so8t.errors.ConfigError` that names the
fields involved.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from so8t.errors import ConfigError


class TrainConfig(BaseModel):
    """SO8T QLoRA training: the runbook's flags plus the method's own."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    base_model: str = Field(description="Base model: an embedded one ('smollm2', the SmolLM2-135M-Instruct default; "
                            "'gemma3-270m' after `make base-gemma`; see `so8t base list`) or a local Hugging Face model directory.")
    dataset: str = Field(description="Training data, JSONL (several files: comma-separated): {instruction, output[, thinking]}, {text} or {text, label} records.")
    output_dir: str = Field(description="Where checkpoints, the final adapter, gates, config and loss log go.")
    decision_prompt: str | None = Field(
        None, description="JSON file {system, user_template} with the decision prompt for {text, label} records "
        "(default: the built-in policy prompt of so8t/decision.py); recorded as decision_prompt.json in output_dir, "
        "where bake, convert and calibrate pick it up.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_target_modules: str = Field(
        "all-linear",
        description="Comma-separated Linear names to adapt, or 'all-linear' for every Linear in the decoder layers of this architecture (lm_head excluded).",
    )
    lora_layers: str = Field(
        "all", description="Decoder layers whose Linear layers get LoRA adapters: 'all', 'top:K' (the last K), or indices "
        "and ranges like '20-29'. Layers below the lowest adapted or gated layer need no backward pass.")
    batch_size: int = Field(1, ge=1, description="Examples per device per micro-batch.")
    gradient_accumulation_steps: int = Field(8, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (linear warm-up over warmup_steps, then linear decay).")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear learning-rate warm-up.")
    num_epochs: float = Field(3, gt=0, description="Epochs over the dataset (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use num_epochs).")
    max_length: int = Field(1024, ge=8, description="Truncate examples to this many tokens; truncation is counted and reported.")
    save_steps: int = Field(100, ge=1, description="Save a checkpoint every this many optimizer steps.")
    save_total_limit: int = Field(3, ge=1, description="Keep only the newest this many checkpoints.")
    resume_from_checkpoint: str | None = Field(
        None, description="Resume from a checkpoint directory, or 'latest' for the newest complete one in output_dir."
    )
    load_in_4bit: bool = Field(False, description="Load the base in 4-bit NF4 (bitsandbytes; CUDA or CPU): QLoRA.")
    seed: int = Field(42, description="Seed of initialisation, dropout and data order.")
    pet_lambda: float = Field(
        0.1, ge=0,
        description="Peak PET weight (three-phase schedule 0.1x/0.4x/1.0x); 0 disables PET. 0.1 chosen by experiment (BENCHMARKS.md).",
    )
    label_loss: Literal["answer", "label_token"] = Field(
        "answer", description="Loss of {text, label} records: 'answer' on the whole assistant answer (label, end of "
        "turn), 'label_token' on the label's first token only (what calibration reads).")
    so8t_layers: str = Field("all", description="Layers that get an SO(8) gate: 'all', 'none', 'top:K', or indices and ranges like '0,15,29' or '20-29'.")
    so8t_rotation: Literal["expm", "cayley"] = Field("expm", description="Map from skew generator to rotation: matrix exponential or Cayley.")
    logging_steps: int = Field(1, ge=1, description="Log losses every this many optimizer steps.")
    share_prompt_prefix: bool = Field(
        True, description="Batch records of one kind together and evaluate their common prompt prefix (the decision "
        "prompt's policy) once per batch; same loss and gradients, fewer tokens. Off in multi-process runs.")
    sparse_lm_head: bool = Field(
        True, description="Apply the LM head only at the positions that carry loss (one row per label record with "
        "label_loss label_token) instead of every token; same loss and gradients. Used only when a one-time check "
        "shows the model's logits are its head applied to its last hidden state, and in single-process runs; otherwise "
        "the full head runs.")
    gradient_checkpointing: bool = Field(
        False, description="Keep only each decoder layer's input for the backward pass and recompute the layer there "
        "(non-reentrant torch checkpointing): same loss and gradients, far less activation memory, one more forward "
        "pass of every layer per step. With batch_size > 1 it needs --no-share_prompt_prefix (a shared prefix is evaluated through a "
        "key/value cache, which checkpointed layers do not keep). `so8t train --dry_run` shows what it saves.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Matmul precision of training: 'bf16' autocast (weights, gradients and optimizer state "
        "stay float32), 'fp32', or 'auto': bf16 where the hardware computes it natively (a CUDA GPU with bf16; a CPU "
        "with AVX512-BF16 or AMX) and not with --load_in_4bit, else fp32.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with the base model (off by default).")
    num_processes: int = Field(
        1, ge=1, description="Training processes: 1 trains in this process; N > 1 re-runs this training under "
        "`accelerate launch --num_processes N` (DDP: one process per GPU over NCCL, or N CPU processes over gloo), "
        "with the same checkpoints and resume. The effective batch is N x batch_size x gradient_accumulation_steps "
        "(docs/multi-gpu.md).")
    accelerate_config: str | None = Field(
        None, description="An accelerate config YAML to launch with (deployments/accelerate/ddp.yaml, or "
        "fsdp-8b.yaml to shard a base that does not fit one GPU); its num_processes applies unless num_processes "
        "> 1 is given. Implies a launch even with num_processes 1.")

    @model_validator(mode="after")
    def _cross_field(self) -> "TrainConfig":
        errors = []
        if self.max_steps == 0 or self.max_steps < -1:
            errors.append(f"max_steps {self.max_steps} must be -1 (use num_epochs) or positive")
        if self.max_steps > 0 and self.save_steps > self.max_steps:
            errors.append(
                f"save_steps {self.save_steps} > max_steps {self.max_steps}: no checkpoint would be written; lower save_steps"
            )
        if self.gradient_checkpointing and self.share_prompt_prefix and self.batch_size > 1:
            errors.append(
                f"gradient_checkpointing with share_prompt_prefix and batch_size {self.batch_size}: a shared prompt prefix "
                "is evaluated once through a key/value cache, which checkpointed layers do not keep; pass "
                "--no-share_prompt_prefix, or --batch_size 1 (no prefix is shared then)"
            )
        if errors:
            raise ValueError("; ".join(errors))
        return self


def build_config(cls: type[BaseModel], values: dict) -> BaseModel:
    """Validate ``values`` into ``cls``, gathering every problem into one ConfigError line.

    Raises:
        ConfigError: ``field: problem; field: problem``.
    """
    try:
        return cls(**values)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(f"invalid {cls.__name__}: " + "; ".join(parts)) from None
