"""Training runs that resume and survive CUDA out-of-memory errors (``so8t train --oom_retries N`` and the
Prefect train task alike).

- Resume: an attempt trains with ``resume_from_checkpoint="latest"`` when the output directory holds a
  complete checkpoint (:func:`plan_training`), so a retry, or a re-run after the process was killed,
  continues from the newest checkpoint instead of step 0.
- Out of memory: a CUDA out-of-memory error records the next memory remedy (:func:`next_oom_remedy`: the
  order ``so8t train --dry_run`` advises) in ``<output_dir>/so8t_oom_remedies.json``, so every later
  attempt, and a later run on the same output directory, trains with the same settings
  (:func:`record_oom`); :func:`train_with_remedies` retries in-process, the Prefect task through its
  retries.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from so8t.config import TrainConfig
from so8t.digests import count_records
from so8t.errors import So8tError
from so8t.training.launch import launch_train, needs_launch
from so8t.training.preflight import MIN_MAX_LENGTH, next_memory_remedy
from so8t.training.train import CONFIG_FILE, list_checkpoints, read_loss_log, total_steps, train

logger = logging.getLogger(__name__)

OOM_FILE = "so8t_oom_remedies.json"


MIN_OOM_MAX_LENGTH = MIN_MAX_LENGTH


class OomRemedy(BaseModel):
    """One runbook remedy applied after a CUDA out-of-memory error."""

    step: str = Field(description="Remedy: 'batch-1+accumulation', 'gradient-checkpointing', '4-bit' or 'max-length'.")
    changes: dict[str, tuple[Any, Any]] = Field(description="Field -> (old, new).")
    reason: str = Field(description="The error that triggered it (first line).")

    def describe(self) -> str:
        return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items())


class OutOfMemoryRetry(RuntimeError):
    """Raised after recording a remedy: the next attempt trains with it."""


def next_oom_remedy(cfg: TrainConfig, reason: str = "CUDA out of memory") -> OomRemedy | None:
    """The next memory remedy after a CUDA out-of-memory error, or None when all are used.

    The order is :func:`so8t.training.preflight.next_memory_remedy`'s, the one ``so8t train --dry_run`` advises:
    batch size 1 with more accumulation (the effective batch unchanged), gradient checkpointing, 4-bit
    loading, then ``max_length`` halved down to 64 tokens.
    """
    remedy = next_memory_remedy(cfg)
    return None if remedy is None else OomRemedy(step=remedy.step, changes=remedy.changes, reason=reason)


def apply_remedies(cfg: TrainConfig, remedies: list[OomRemedy]) -> TrainConfig:
    """``cfg`` with the recorded remedies' new values."""
    update: dict[str, Any] = {}
    for r in remedies:
        update.update({k: new for k, (_, new) in r.changes.items()})
    return TrainConfig(**{**cfg.model_dump(), **update}) if update else cfg


def read_remedies(output_dir: str | Path) -> list[OomRemedy]:
    p = Path(output_dir) / OOM_FILE
    return [OomRemedy(**r) for r in json.loads(p.read_text())] if p.is_file() else []


def _write_remedies(output_dir: str | Path, remedies: list[OomRemedy]) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (OOM_FILE + ".tmp")
    tmp.write_text(json.dumps([r.model_dump(mode="json") for r in remedies], indent=2) + "\n")
    tmp.replace(out / OOM_FILE)


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


class TrainResult(BaseModel):
    """What a training stage produced (paths and numbers, never tensors)."""

    output_dir: str
    global_step: int
    resumed_from: str | None
    first_ce_loss: float | None
    last_ce_loss: float | None
    oom_remedies: list[OomRemedy] = Field(default_factory=list)
    effective_config: dict[str, Any]
    seconds: float
    world_size: int = 1  # training processes (accelerate launch: num_processes)


class TrainingPlan(BaseModel):
    """How an attempt trains: the recorded OOM remedies applied, resumed when a checkpoint exists."""

    remedies: list[OomRemedy]
    effective: TrainConfig
    run_cfg: TrainConfig
    resume_from: str | None
    total_steps: int | None = None  # optimizer steps of the whole run (counting reads the dataset: on request)


def plan_training(cfg: TrainConfig, *, count_steps: bool = True) -> TrainingPlan:
    """Apply the remedies recorded in the output directory; resume from its newest checkpoint (and count the run's
    optimizer steps, which reads every dataset file, unless ``count_steps`` is off)."""
    remedies = read_remedies(cfg.output_dir)
    effective = apply_remedies(cfg, remedies)
    resume = list_checkpoints(effective.output_dir)
    run_cfg = effective.model_copy(update={"resume_from_checkpoint": "latest" if resume else None})
    return TrainingPlan(remedies=remedies, effective=effective, run_cfg=run_cfg,
                        resume_from=str(resume[-1]) if resume else None,
                        total_steps=total_steps(count_records(cfg.dataset), effective, effective.num_processes)
                        if count_steps else None)


def training_result(cfg: TrainConfig, plan: TrainingPlan, seconds: float) -> tuple[TrainResult, list[dict[str, Any]]]:
    """What a finished training wrote (resolved config, loss log), as a result; and the loss log."""
    resolved = json.loads((Path(cfg.output_dir) / CONFIG_FILE).read_text())
    losses = read_loss_log(cfg.output_dir)
    result = TrainResult(
        output_dir=str(Path(cfg.output_dir).resolve()), global_step=resolved["global_step"],
        resumed_from=resolved.get("resumed_from"),
        first_ce_loss=losses[0]["ce_loss"] if losses else None, last_ce_loss=losses[-1]["ce_loss"] if losses else None,
        oom_remedies=plan.remedies, effective_config=plan.effective.model_dump(mode="json"), seconds=seconds,
        world_size=resolved.get("world_size", 1),
    )
    return result, losses


def run_attempt(cfg: TrainConfig) -> Path:
    """One training attempt: in this process, or under ``accelerate launch`` when ``cfg`` asks for several
    processes (:mod:`so8t.training.launch`; a CUDA out-of-memory error there is raised here as the same error)."""
    return launch_train(cfg) if needs_launch(cfg) else train(cfg)


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def record_oom(cfg: TrainConfig, plan: TrainingPlan, exc: BaseException) -> OomRemedy:
    """Record the next memory remedy after the CUDA out-of-memory error ``exc`` and free CUDA memory.

    Raises:
        So8tError: every remedy is used already (one line: what was tried).
    """
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    remedy = next_oom_remedy(plan.effective, reason)
    if remedy is None:
        raise So8tError(
            f"CUDA out of memory even after every runbook remedy ({'; '.join(r.describe() for r in plan.remedies)}): "
            "use a smaller base model or a larger GPU"
        ) from exc
    _write_remedies(cfg.output_dir, [*plan.remedies, remedy])
    _free_cuda()
    logger.warning("CUDA out of memory; the next attempt applies runbook remedy %s: %s", remedy.step, remedy.describe())
    return remedy


def train_with_remedies(cfg: TrainConfig, oom_retries: int = 3) -> TrainResult | None:
    """Train ``cfg`` as given (with any remedies recorded in its output directory); after a CUDA out-of-memory
    error record the next remedy and train again, resuming from the newest checkpoint, up to ``oom_retries``
    times. ``so8t train``'s path: unlike :func:`plan_training`, the first attempt never resumes on its own. Returns
    None on the other processes of a multi-process run (accelerate launch), where rank 0 writes the results.
    With ``num_processes > 1`` each attempt is a launch (:func:`run_attempt`), and the remedies are applied
    here, between launches."""
    if oom_retries < 0:
        raise So8tError(f"--oom_retries {oom_retries}: must be 0 or more")
    t0 = time.monotonic()
    plan = plan_training(cfg, count_steps=False)
    run_cfg = plan.effective  # the first attempt as given (recorded remedies applied), never resumed on its own
    for attempt in range(oom_retries + 1):
        try:
            run_attempt(run_cfg)
            break
        except Exception as e:
            if not _is_cuda_oom(e) or attempt == oom_retries:
                raise
            record_oom(cfg, plan, e)
            plan = plan_training(cfg, count_steps=False)
            run_cfg = plan.run_cfg  # the remedies so far, resumed from the newest checkpoint
    if int(os.environ.get("RANK", "0")) != 0:  # a multi-process run: only the main process writes the results
        return None
    return training_result(cfg, plan, time.monotonic() - t0)[0]
