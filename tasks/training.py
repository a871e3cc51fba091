"""train_task: ``so8t.train.train`` with resume, CUDA out-of-memory remedies and a progress artifact.

Retries:

- Every attempt trains with ``resume_from_checkpoint="latest"`` when the output directory holds a
  complete checkpoint, so a retry (or a re-run after the flow's process was killed) continues from
  the newest checkpoint instead of step 0.
- A CUDA out-of-memory error applies the memory remedies in order, one per retry (see
  :func:`next_oom_remedy`: the order of ``so8t train --dry_run``'s advice). The remedies applied so
  far are recorded in ``<output_dir>/so8t_oom_remedies.json``, so every later attempt, and a later
  flow run on the same output directory, trains with the same settings; the task's result and a
  table artifact say what was changed and why.
- Errors in the user's input (:class:`so8t.errors.So8tError`) are never retried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from so8t.config import TrainConfig
from so8t.errors import So8tError
from so8t.preflight import MIN_MAX_LENGTH, next_memory_remedy
from so8t.train import CONFIG_FILE, list_checkpoints, read_loss_log, total_steps, train
from tasks.caching import ContentHash, count_records, maybe_path, split_paths

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

    The order is :func:`so8t.preflight.next_memory_remedy`'s, the one ``so8t train --dry_run`` advises:
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


def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, So8tError)


def _train_inputs(params: dict[str, Any]) -> list[str | None]:
    cfg: TrainConfig = params["cfg"]
    return [*split_paths(cfg.dataset), maybe_path(cfg.base_model)]


class _ProgressWatcher:
    """Follows ``loss_log.jsonl`` and moves a Prefect progress artifact (a daemon thread)."""

    def __init__(self, cfg: TrainConfig, artifact_id: Any, total: int, interval_s: float = 2.0):
        self.cfg, self.artifact_id, self.total, self.interval_s = cfg, artifact_id, max(total, 1), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="so8t-train-progress", daemon=True)
        self._last = -1.0

    def __enter__(self) -> _ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()

    def update(self, done: bool = False) -> None:
        log = read_loss_log(self.cfg.output_dir)
        step = log[-1]["step"] if log else 0
        pct = 100.0 if done else min(99.0, 100.0 * step / self.total)
        if pct == self._last:
            return
        self._last = pct
        desc = f"step {step}/{self.total}" + (f", CE {log[-1]['ce_loss']:.3f}" if log else "")
        try:
            update_progress_artifact(self.artifact_id, pct, description=desc)
        except Exception as e:  # progress is cosmetic: never fail training for it, but say so
            logging.getLogger(__name__).warning("training progress artifact not updated: %s", e)


class TrainingPlan(BaseModel):
    """How an attempt trains: the recorded OOM remedies applied, resumed when a checkpoint exists."""

    remedies: list[OomRemedy]
    effective: TrainConfig
    run_cfg: TrainConfig
    resume_from: str | None
    total_steps: int


def plan_training(cfg: TrainConfig) -> TrainingPlan:
    """Apply the remedies recorded in the output directory; resume from its newest checkpoint."""
    remedies = read_remedies(cfg.output_dir)
    effective = apply_remedies(cfg, remedies)
    resume = list_checkpoints(effective.output_dir)
    run_cfg = effective.model_copy(update={"resume_from_checkpoint": "latest" if resume else None})
    return TrainingPlan(remedies=remedies, effective=effective, run_cfg=run_cfg,
                        resume_from=str(resume[-1]) if resume else None,
                        total_steps=total_steps(count_records(cfg.dataset), effective))


def training_result(cfg: TrainConfig, plan: TrainingPlan, seconds: float) -> tuple[TrainResult, list[dict[str, Any]]]:
    """What a finished training wrote (resolved config, loss log), as a result; and the loss log."""
    resolved = json.loads((Path(cfg.output_dir) / CONFIG_FILE).read_text())
    losses = read_loss_log(cfg.output_dir)
    result = TrainResult(
        output_dir=str(Path(cfg.output_dir).resolve()), global_step=resolved["global_step"],
        resumed_from=resolved.get("resumed_from"),
        first_ce_loss=losses[0]["ce_loss"] if losses else None, last_ce_loss=losses[-1]["ce_loss"] if losses else None,
        oom_remedies=plan.remedies, effective_config=plan.effective.model_dump(mode="json"), seconds=seconds,
    )
    return result, losses


@task(
    name="train-so8t",
    retries=3,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_user_error,
    cache_policy=ContentHash(input_paths=_train_inputs),
    persist_result=True,
)
def train_task(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) SO8T; on CUDA OOM record the next runbook remedy and retry."""
    log = get_run_logger()
    t0 = time.monotonic()
    plan = plan_training(cfg)
    remedies, effective = plan.remedies, plan.effective
    if remedies:
        log.warning("training with out-of-memory remedies: %s", "; ".join(r.describe() for r in remedies))
    if plan.resume_from:
        log.info("resuming from %s", plan.resume_from)
    artifact = create_progress_artifact(0.0, key="training-progress", description=f"step 0/{plan.total_steps}")
    try:
        watcher = _ProgressWatcher(plan.run_cfg, artifact, plan.total_steps)
        with watcher:
            train(plan.run_cfg)
        watcher.update(done=True)  # after the watcher thread has stopped: nothing can overwrite 100 %
    except Exception as e:
        if not _is_cuda_oom(e):
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        remedy = next_oom_remedy(effective, reason)
        if remedy is None:
            raise So8tError(
                f"CUDA out of memory even after every runbook remedy ({'; '.join(r.describe() for r in remedies)}): "
                "use a smaller base model or a larger GPU"
            ) from e
        _write_remedies(cfg.output_dir, [*remedies, remedy])
        _free_cuda()
        log.warning("CUDA out of memory; next attempt applies runbook remedy %s: %s", remedy.step, remedy.describe())
        raise OutOfMemoryRetry(f"CUDA out of memory; retrying with {remedy.describe()}") from e

    result, losses = training_result(cfg, plan, time.monotonic() - t0)
    create_table_artifact(
        [{"step": r["step"], "ce_loss": r["ce_loss"], "pet_loss": r.get("pet_loss"), "lr": r.get("learning_rate")}
         for r in losses],
        key="training-loss", description=f"SO8T training: {result.global_step} steps"
        + (f", resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""),
    )
    if remedies:
        create_table_artifact(
            [{"step": r.step, "changes": r.describe(), "reason": r.reason} for r in remedies],
            key="training-oom-remedies", description="Runbook remedies applied after CUDA out-of-memory errors",
        )
    return result


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
