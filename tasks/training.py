"""train_task: one call of :mod:`so8t.training.runs` (resume, CUDA out-of-memory remedies) plus retries, the
content-hash cache policy and a progress artifact.

A CUDA out-of-memory error records the next memory remedy and raises :class:`OutOfMemoryRetry`; the
task's retries train again with it (each attempt resuming from the newest checkpoint). Errors in the
user's input (:class:`so8t.errors.So8tError`) are never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from so8t.config import TrainConfig
from so8t.digests import maybe_path, split_paths
from so8t.errors import So8tError
from so8t.training.launch import launch_train, needs_launch
from so8t.training.train import read_loss_log, train
from so8t.training.runs import (OutOfMemoryRetry, TrainResult, _is_cuda_oom, plan_training, record_oom,  # noqa: F401
                             training_result)
from tasks.caching import ContentHash



















def _retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry anything but a user error (exit code 2); a crashed multi-process launch (exit code 1) is retried."""
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, So8tError) and exc.exit_code == 2)


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
    remedies = plan.remedies
    if remedies:
        log.warning("training with out-of-memory remedies: %s", "; ".join(r.describe() for r in remedies))
    if plan.resume_from:
        log.info("resuming from %s", plan.resume_from)
    artifact = create_progress_artifact(0.0, key="training-progress", description=f"step 0/{plan.total_steps}")
    try:
        watcher = _ProgressWatcher(plan.run_cfg, artifact, plan.total_steps)
        with watcher:  # several processes: accelerate launch, the same output directory (so8t.training.launch)
            (launch_train if needs_launch(plan.run_cfg) else train)(plan.run_cfg)
        watcher.update(done=True)  # after the watcher thread has stopped: nothing can overwrite 100 %
    except Exception as e:
        if not _is_cuda_oom(e):
            raise
        remedy = record_oom(cfg, plan, e)  # So8tError (not retried) when every remedy is used
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


