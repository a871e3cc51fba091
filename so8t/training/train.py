"""SO8T QLoRA training on transformers' Trainer and peft.

Trainable: LoRA adapters (peft) and the SO(8) gate generators (:mod:`so8t.training.gates`). Loss: CE on
assistant tokens plus the scheduled PET term (:mod:`so8t.training.pet`), logged separately. Checkpoints
hold adapter, generators, optimizer, scheduler, RNG states and step; a checkpoint counts as
complete only once its ``so8t_checkpoint.json`` marker is written, so ``latest`` never picks a
checkpoint that a killed process left half-written.

Output directory layout::

    adapter_model.safetensors, adapter_config.json   final LoRA adapter (peft)
    so8t_gates.safetensors                            final gate generators (float32)
    so8t_train_config.json                            resolved configuration + data stats
    loss_log.jsonl                                    one line per logged step: ce, pet, lr, ...
    checkpoint-N/                                     newest save_total_limit checkpoints
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from so8t.training.batching import GroupedBatchSampler, SharedPrefixCollator, forward_shared_prefix, sparse_head_matches, sparse_lm_loss
from so8t.config import TrainConfig
from so8t.training.data import IGNORE_INDEX, PadCollator
from so8t.decision import PROMPT_FILE, DecisionPrompt, load_decision_prompt, write_decision_prompt
from so8t.errors import ConfigError, ModelError, storage_problem
from so8t.training.gates import attach_gates, find_attention_layers, iter_gates, load_gates, resolve_layers, save_gates
from so8t.training.pet import pet_energy, pet_schedule

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "so8t_checkpoint.json"
CONFIG_FILE = "so8t_train_config.json"
LOSS_LOG = "loss_log.jsonl"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint directories in step order (only those with the completion marker by default)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (not complete_only or (p / CHECKPOINT_MARKER).is_file()):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str | None, output_dir: str | Path) -> Path | None:
    """``--resume_from_checkpoint``: a path, ``latest``, or None.

    Raises:
        ConfigError: a given path that is not a complete checkpoint.
    """
    if spec is None:
        return None
    if spec == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            logger.warning("resume_from_checkpoint=latest: no complete checkpoint in %s, starting from step 0", output_dir)
            return None
        return ckpts[-1]
    p = Path(spec)
    if not p.is_dir():
        raise ConfigError(f"resume_from_checkpoint {spec!r}: no such checkpoint directory")
    if not (p / CHECKPOINT_MARKER).is_file():
        raise ConfigError(f"resume_from_checkpoint {spec!r}: incomplete checkpoint (no {CHECKPOINT_MARKER}); use 'latest' or an earlier one")
    return p


def resolve_lora_targets(model: nn.Module, spec: str) -> list[str]:
    """Leaf names of the Linear layers to adapt, checked against this architecture.

    ``all-linear`` gives every Linear (or 4-bit Linear) inside the decoder layers: q/k/v/o and
    gate/up/down for Llama, qkv_proj/o_proj/gate_up_proj/down_proj for Phi-3.

    Raises:
        ModelError: a requested name that no layer has.
    """
    names: set[str] = set()
    for full, module in model.named_modules():
        if ".layers." in f".{full}" and _is_linear(module):
            names.add(full.rsplit(".", 1)[-1])
    if spec.strip() == "all-linear":
        if not names:
            raise ModelError("no Linear layers found inside the decoder layers: cannot place LoRA adapters")
        return sorted(names)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ModelError(f"lora_target_modules {unknown} do not exist in this model: choose from {', '.join(sorted(names))}")
    return wanted


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def _device_is_cuda() -> bool:
    return torch.cuda.is_available()


def load_base(model_dir: Path, cfg: TrainConfig) -> tuple[nn.Module, Any]:
    """Tokenizer and base model (fp32 on CPU, bf16 on CUDA; NF4 when ``load_in_4bit``)."""
    from transformers import AutoTokenizer, BitsAndBytesConfig

    from so8t.base_models import load_error

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - anything transformers raises on a user's model is a bad model
        raise load_error(model_dir, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    compute = torch.bfloat16 if _device_is_cuda() else torch.float32
    kwargs: dict[str, Any] = {"dtype": compute, "trust_remote_code": cfg.trust_remote_code}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
        )
        # each process of a launched run holds its own copy on its own GPU (torchrun's LOCAL_RANK)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))} if _device_is_cuda() else {"": "cpu"}
    from so8t.base_models import load_causal_lm

    return load_causal_lm(model_dir, **kwargs), tok


def build_so8t_model(base: nn.Module, cfg: TrainConfig) -> tuple[nn.Module, list[int]]:
    """Wrap a base model with LoRA (peft) and attach the SO(8) gates.

    Returns:
        The peft model with gates, and the gated layer indices.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    find_attention_layers(base)  # refuse architectures without o_proj before anything else
    targets = resolve_lora_targets(base, cfg.lora_target_modules)
    if cfg.load_in_4bit:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        enable_checkpointing(base)
        _no_input_grads(base)
    n_layers = len(find_attention_layers(base))
    lora_layers = resolve_layers(cfg.lora_layers, n_layers, "lora_layers")
    if not lora_layers:
        raise ConfigError("lora_layers 'none' leaves nothing to adapt: give 'all', 'top:K' or layer indices")
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=targets, bias="none", task_type="CAUSAL_LM",
        layers_to_transform=None if len(lora_layers) == n_layers else lora_layers,
    )
    model = get_peft_model(base, lora)
    if cfg.gradient_checkpointing:
        _no_input_grads(base)
    layers = attach_gates(model, cfg.so8t_layers, mapping=cfg.so8t_rotation)
    return model, layers


def _no_input_grads(model: nn.Module) -> None:
    """Undo ``enable_input_require_grads``, which transformers' checkpointing and peft's ``get_peft_model``
    each switch on (each call replaces the record of the last one's hooks, hence a call after each).

    Only reentrant checkpointing needs the embeddings' output to require a gradient; without it, layers
    below the lowest adapted or gated one run no backward pass, checkpointed or not.
    """
    disable = getattr(model, "disable_input_require_grads", None)
    if disable is not None:
        disable()


def enable_checkpointing(model: nn.Module) -> None:
    """Gradient (activation) checkpointing of every decoder layer, non-reentrant.

    Each layer keeps only its input and runs again in the backward pass: the loss and gradients are
    those without checkpointing (torch restores the RNG state, so LoRA dropout draws the same masks).
    The SO(8) gates' rotations are computed before the layers run (:mod:`so8t.training.gates`), outside every
    checkpoint. The key/value cache is off: a checkpointed layer does not keep it.
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x; the old name is deprecated
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


class _LossLog:
    """Appends every log line (CE and PET separately) to ``loss_log.jsonl`` (a TrainerCallback's ``on_log``)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401
        if state.is_world_process_zero and logs and "ce_loss" in logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class _SO8TTrainerMixin:
    """What SO8TTrainer adds to transformers' Trainer (mixed in by :func:`_make_trainer_class`, so that
    transformers is imported only when training): the CE + PET loss, its separate logging, the grouped batch
    sampler, and the gates and completion marker in every checkpoint."""

    def __init__(self, *args, pet_lambda: float = 0.0, batch_sampler_factory=None, sparse_head: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.pet_lambda = pet_lambda
        self.sparse_head = sparse_head
        self._sampler_factory = batch_sampler_factory
        self._acc = {"ce": 0.0, "pet": 0.0, "pet_energy": 0.0, "n": 0}
        self._last_logged_step: int | None = None  # set at the first step (also after a resume)

    # ------------------------------------------------------------------------- the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._last_logged_step is None:
            self._last_logged_step = self.state.global_step
        kwargs = {}
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        ce, outputs, hidden, mask = self._ce_forward(model, inputs, kwargs, return_outputs)
        self._refuse_divergence(model, inputs, ce)
        scale = 1
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            scale = self.accelerator.num_processes
        loss = ce * scale
        ga_scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if ga_scaled is None:
            ga_scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        per_step = 1.0 if ga_scaled else 1.0 / self.current_gradient_accumulation_steps
        if self.pet_lambda > 0 and model.training:
            loss = loss + self._pet_term(hidden, mask, ga_scaled)
        if model.training:
            self._acc["ce"] += float(ce.detach()) * per_step
            self._acc["n"] += 1
        return (loss, outputs) if return_outputs else loss

    def _ce_forward(self, model, inputs, kwargs: dict, return_outputs: bool):
        """``(ce, outputs or None, last hidden states or None, attention mask)`` of one batch: the LM head only
        where a label is (sparse head), the shared prompt prefix once (a SharedPrefixCollator batch), or the
        plain forward pass. Hidden states only when the PET term needs them."""
        want_hidden = self.pet_lambda > 0
        if self.sparse_head and not return_outputs:  # the LM head only where a label is
            ce, hidden, mask = sparse_lm_loss(model, inputs, kwargs.get("num_items_in_batch"), want_hidden)
            return ce, None, hidden, mask
        if "prefix_ids" in inputs:  # a SharedPrefixCollator batch: the prompt prefix once
            outputs, hidden, mask = forward_shared_prefix(model, inputs, output_hidden_states=want_hidden, **kwargs)
        else:
            outputs = model(**inputs, **kwargs, output_hidden_states=want_hidden)
            hidden = outputs.hidden_states[-1] if want_hidden else None
            mask = inputs.get("attention_mask")
        return outputs.loss, outputs, hidden, mask

    def _refuse_divergence(self, model, inputs, ce: torch.Tensor) -> None:
        """A non-finite training loss stops the run before the optimizer step: no non-finite update, no
        checkpoint of NaN weights."""
        has_targets = bool((inputs["labels"][:, 1:] != IGNORE_INDEX).any())  # else HF's CE is 0/0 by design
        if model.training and has_targets and not bool(torch.isfinite(ce.detach()).all()):
            raise ModelError(f"training diverged: the loss is {float(ce.detach())} at step "
                             f"{self.state.global_step + 1}; lower --learning_rate (now {self.args.learning_rate:g}) "
                             "or --pet_lambda; earlier checkpoints are intact")

    def _pet_term(self, hidden: torch.Tensor, mask: torch.Tensor | None, ga_scaled: bool) -> torch.Tensor:
        """The scheduled PET term as it is added to the loss, accumulated for the log."""
        energy = pet_energy(hidden, mask)
        weight = pet_schedule(self.state.global_step, self.state.max_steps, self.pet_lambda)
        term = weight * energy
        self._acc["pet"] += float(term.detach()) / self.current_gradient_accumulation_steps
        self._acc["pet_energy"] += float(energy.detach()) / self.current_gradient_accumulation_steps
        # The Trainer divides the loss by accumulation only when CE was not pre-scaled.
        return term / self.current_gradient_accumulation_steps if ga_scaled else term

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._acc["n"]:
            steps = max(self.state.global_step - (self._last_logged_step or 0), 1)
            self._last_logged_step = self.state.global_step
            logs["ce_loss"] = round(self._acc["ce"] / steps, 6)
            logs["pet_loss"] = round(self._acc["pet"] / steps, 8)
            logs["pet_energy"] = round(self._acc["pet_energy"] / steps, 6)
            self._acc = {"ce": 0.0, "pet": 0.0, "pet_energy": 0.0, "n": 0}
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        if self._sampler_factory is not None:
            return self._sampler_factory(self.args)
        return super()._get_train_sampler(train_dataset)

    # ------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # transformers calls _save on every rank for some setups
            if _has_gates(self.model):  # plain LoRA (--so8t_layers none) has none to save
                save_gates(self.model, output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            ckpt = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            marker = {"step": self.state.global_step, "complete": True}
            tmp = ckpt / (CHECKPOINT_MARKER + ".tmp")
            tmp.write_text(json.dumps(marker))
            os.replace(tmp, ckpt / CHECKPOINT_MARKER)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if _has_gates(model or self.model):
            load_gates(model or self.model, resume_from_checkpoint, attach=False)
        logger.info("resumed adapter and SO8T gates from %s", resume_from_checkpoint)


def _make_trainer_class():
    from transformers import Trainer, TrainerCallback

    class LossLogCallback(_LossLog, TrainerCallback):
        """Appends every log line (CE and PET separately) to ``loss_log.jsonl``."""

    class SO8TTrainer(_SO8TTrainerMixin, Trainer):
        """Trainer with CE + PET, gates in every checkpoint, and completion markers."""

    return SO8TTrainer, LossLogCallback


def _has_gates(model: nn.Module) -> bool:
    return next(iter(iter_gates(model)), None) is not None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), as torch's kernels see it."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(precision: str, cuda: bool, load_in_4bit: bool) -> str:
    """``'bf16'`` or ``'fp32'`` for a TrainConfig.precision on this machine (see its description)."""
    if precision != "auto":
        if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision bf16: this GPU does not support bfloat16; use --precision fp32 or auto")
        return precision
    if cuda:
        return "bf16" if not load_in_4bit and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if not load_in_4bit and cpu_has_native_bf16() else "fp32"


def check_output_dir(cfg: TrainConfig) -> None:
    """Refuse an output_dir that cannot be written, or that holds another run's checkpoints without resume."""
    from so8t.outpaths import check_output_dir as check_writable

    out = check_writable(cfg.output_dir, "output_dir")
    if cfg.resume_from_checkpoint is None and list_checkpoints(out, complete_only=False):
        raise ConfigError(
            f"output_dir {out} already holds checkpoints: pass --resume_from_checkpoint latest to continue, "
            f"or choose an empty output_dir"
        )


@contextmanager
def _disk_full_is_one_line(out: Path) -> Iterator[None]:
    """A full disk while training or saving: unfinished checkpoints and a partly written final adapter
    removed (``latest`` never picks an unfinished checkpoint anyway), then one line (exit 2) that says
    how to go on."""
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a full disk
        problem = storage_problem(e, out)
        if problem is None:
            raise
        complete = set(list_checkpoints(out))
        for ck in list_checkpoints(out, complete_only=False):
            if ck not in complete:
                shutil.rmtree(ck, ignore_errors=True)
        for p in out.iterdir() if out.is_dir() else ():
            if p.name not in before and not _CKPT_RE.match(p.name):  # the final adapter, half written
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise ConfigError(f"output_dir {out}: {problem} while saving: free space, then resume with "
                          "--resume_from_checkpoint latest (unfinished checkpoints were removed)") from None


def train(cfg: TrainConfig) -> Path:
    """Run SO8T training; returns the output directory.

    All input checks (data, base model, architecture, flags) run before anything is written to
    ``output_dir``.

    Raises:
        DataError, ModelError, ConfigError: bad input, with a one-line message.
    """
    from transformers import set_seed

    from so8t.base_models import resolve_base_model

    from so8t.training.train_data import load_training_data

    checked, prompt, resume = _check_before_loading(cfg)
    out = Path(cfg.output_dir)
    model_dir = resolve_base_model(cfg.base_model)
    set_seed(cfg.seed)
    base, tok = load_base(model_dir, cfg)
    model, layers = build_so8t_model(base, cfg)
    data, stats = load_training_data(cfg.dataset, tok, cfg.max_length, prompt, label_loss=cfg.label_loss,
                                     checked=checked)
    logger.info("data: %s", stats.summary(cfg.max_length))
    if stats.loss_tokens == 0:
        raise ConfigError(f"max_length {cfg.max_length} leaves no answer token in {cfg.dataset}: raise --max_length")

    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:  # the main process of a launched run writes it, the others read
        write_decision_prompt(prompt, out)  # before any checkpoint: bake and calibration read it from here
    cuda = _device_is_cuda()
    use_bf16 = resolve_precision(cfg.precision, cuda, cfg.load_in_4bit) == "bf16"
    args = _training_arguments(cfg, out, cuda, use_bf16)
    loss_log = out / LOSS_LOG
    if args.process_index == 0:  # one writer: in a launched run every process gets here (a rewrite raced and lost lines)
        if resume is None:
            loss_log.unlink(missing_ok=True)
        else:
            _truncate_loss_log(loss_log, _checkpoint_step(resume))
    trainer = _build_trainer(cfg, model, tok, data, args, loss_log, use_bf16)
    with _disk_full_is_one_line(out):
        _train_or_finish(trainer, cfg, resume)
        if trainer.is_world_process_zero():
            model.save_pretrained(str(out))
            if _has_gates(model):
                save_gates(model, out)
            tok.save_pretrained(str(out / "tokenizer"))
            resolved = _run_record(cfg, trainer, model, model_dir=model_dir, layers=layers, prompt_sha256=prompt.sha256(),
                                   resume=resume, data=data, stats=stats, use_bf16=use_bf16)
            (out / CONFIG_FILE).write_text(json.dumps(resolved, indent=2) + "\n")
            logger.info("training done: %d steps, output in %s", trainer.state.global_step, out)
    return out


def _check_before_loading(cfg: TrainConfig) -> tuple[list, DecisionPrompt, Path | None]:
    """The checks that need no model, before anything is loaded or written: ``(the checked data files, the
    decision prompt, the checkpoint to resume or None)``."""
    from so8t.training.launch import check_world
    from so8t.training.train_data import check_file, dataset_files

    check_world(cfg)
    # one-line errors on bad data before anything else (loading the model costs seconds)
    checked = [check_file(f) for f in dataset_files(cfg.dataset)]
    prompt = load_decision_prompt(cfg.decision_prompt)
    check_output_dir(cfg)
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)
    out = Path(cfg.output_dir)
    if resume is not None and (out / PROMPT_FILE).is_file() and load_decision_prompt(out / PROMPT_FILE) != prompt:
        raise ConfigError(f"{out / PROMPT_FILE}: the run being resumed was trained on another decision prompt than "
                          f"{cfg.decision_prompt or 'the built-in one'}: resume with the same --decision_prompt")
    return checked, prompt, resume


def _training_arguments(cfg: TrainConfig, out: Path, cuda: bool, use_bf16: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        bf16=use_bf16,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def _build_trainer(cfg: TrainConfig, model: nn.Module, tok: Any, data: Any, args: Any, loss_log: Path,
                   use_bf16: bool) -> Any:
    """The SO8TTrainer of this run: the shared-prefix batches and the sparse LM head where they apply (one
    process), the loss log callback."""
    SO8TTrainer, LossLogCallback = _make_trainer_class()
    share = cfg.share_prompt_prefix and args.world_size == 1
    # DDP must see the wrapped model's own forward (its gradient hooks): the decoder-only path is single-process
    sparse = (cfg.sparse_lm_head and args.world_size == 1
              and sparse_head_matches(model, tok("Hello world, how are you?")["input_ids"][:8]))
    logger.info("precision %s (%s); LM head %s; gradient checkpointing %s", "bf16 autocast" if use_bf16 else "fp32",
                cfg.precision, "at loss positions only" if sparse else "on every position",
                "on" if cfg.gradient_checkpointing else "off")
    if cfg.share_prompt_prefix and not share:
        logger.info("share_prompt_prefix: off in a %d-process run (one forward per batch under DDP)", args.world_size)
    return SO8TTrainer(
        model=model, args=args, train_dataset=data.dataset,
        data_collator=SharedPrefixCollator(tok.pad_token_id) if share else PadCollator(tok.pad_token_id),
        callbacks=[LossLogCallback(loss_log)], pet_lambda=cfg.pet_lambda, sparse_head=sparse,
        batch_sampler_factory=(lambda a: GroupedBatchSampler(
            data.kinds, data.lengths, a.train_batch_size, a.data_seed, strata=data.labels)) if share else None,
    )


def _train_or_finish(trainer: Any, cfg: TrainConfig, resume: Path | None) -> None:
    """Train (from ``resume`` when given); a resumed run already at max_steps only loads its checkpoint."""
    done = _checkpoint_step(resume) if resume is not None else 0
    if resume is not None and cfg.max_steps > 0 and done >= cfg.max_steps:
        # a finished run: transformers would take one more step on every resume (3 -> 4 -> 5)
        logger.info("resume: %s is at step %d of max_steps %d: nothing left to train; final outputs from it",
                    resume, done, cfg.max_steps)
        trainer._load_from_checkpoint(str(resume))
        trainer.state.global_step = done
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def _run_record(cfg: TrainConfig, trainer: Any, model: nn.Module, *, model_dir: Path, layers: list[int], prompt_sha256: str,
                resume: Path | None, data: Any, stats: Any, use_bf16: bool) -> dict[str, Any]:
    """The content of ``so8t_train_config.json``: the resolved configuration, data statistics and the run's facts."""
    return {
        "config": cfg.model_dump(),
        "base_model_dir": str(model_dir),
        "gated_layers": layers,
        "decision_prompt_sha256": prompt_sha256,
        "lora_target_modules": sorted(model.peft_config["default"].target_modules),
        "global_step": trainer.state.global_step,
        "resumed_from": str(resume) if resume else None,
        "data": {"examples": stats.examples, "truncated": stats.truncated, "tokens": stats.tokens,
                 "loss_tokens": stats.loss_tokens, "kinds": stats.kinds,
                 "files": [{"path": str(c.path), "sha256": c.sha256, "records": c.records} for c in data.files],
                 "encoding_fingerprint": data.fingerprint},
        "world_size": trainer.args.world_size,
        "distributed_type": getattr(trainer.accelerator.distributed_type, "value", "NO"),  # DDP: MULTI_GPU/CPU
        "precision": "bf16" if use_bf16 else "fp32",
        "sparse_lm_head": trainer.sparse_head,
    }


def _checkpoint_step(path: Path) -> int:
    m = _CKPT_RE.match(path.name)
    return int(m.group(1)) if m else 0


def _truncate_loss_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (written by a run that was killed after that checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(k + "\n" for k in keep))


def read_loss_log(output_dir: str | Path) -> list[dict[str, Any]]:
    """The logged losses of a run, one dict per logged step."""
    p = Path(output_dir) / LOSS_LOG
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.is_file() else []


def total_steps(n_examples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps a run will take (for progress reporting)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / (cfg.batch_size * world_size)) // cfg.gradient_accumulation_steps
    return max(1, int(per_epoch * cfg.num_epochs))
