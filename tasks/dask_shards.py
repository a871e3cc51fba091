"""Shards as Prefect task runs on prefect-dask's ``DaskTaskRunner``: the flows' way to score and generate on Dask.

:class:`PrefectDaskShards` is a shard executor (:mod:`so8t.shards`) whose ``map`` submits one
``so8t-shard`` task run per shard through the runner's Dask client, each pinned to its own worker
(another worker takes it only if that one is lost), so the Prefect UI shows every shard with its
worker, timing and failure. The library decides what a shard is and how results merge; this module
only decides where shards run. Settings: ``dask_workers`` / ``dask_scheduler`` of the calibration,
evaluation and A/B parameters (:mod:`release.params`); both unset: the stages run sequentially in the
flow's process, as before.

Threads: as in :mod:`so8t.shards` (each llama.cpp instance gets its worker's thread count; a local
cluster of N workers gives each ``max(1, cores // N)``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from so8t.errors import ConfigError
from so8t.shards import CONNECT_TIMEOUT_S, local_threads_per_worker, results_in_order

T = TypeVar("T")
R = TypeVar("R")


@task(name="so8t-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="{name}")
def shard_task(fn: Callable[[Any], Any], job: Any, name: str) -> Any:
    """One shard: ``fn(job)`` on the Dask worker this task run landed on."""
    return fn(job)


class PrefectDaskShards:
    """A shard executor on a ``DaskTaskRunner``: a local cluster of ``workers`` processes, or ``scheduler``'s workers.

    Args:
        workers: Local worker processes (no ``scheduler``), at least 1; with ``scheduler``: the first N of its
            workers (0: all).
        scheduler: Address of a running Dask scheduler; None: a ``LocalCluster`` for the duration of the block.

    The cluster starts on first use (a stage that finds its scores cached starts nothing).
    """

    def __init__(self, workers: int = 0, scheduler: str | None = None):
        from prefect_dask import DaskTaskRunner

        if scheduler is None and workers < 1:
            raise ConfigError(f"dask_workers={workers}: a local dask cluster needs at least 1 worker")
        self.scheduler, self.requested = scheduler, workers
        if scheduler:
            self.runner = DaskTaskRunner(address=scheduler, client_kwargs={"timeout": CONNECT_TIMEOUT_S})
        else:
            self.runner = DaskTaskRunner(cluster_kwargs=dict(
                n_workers=workers, threads_per_worker=local_threads_per_worker(workers), processes=True,
                memory_limit=0, dashboard_address=None, silence_logs=logging.ERROR))
        self.addresses: list[str] = []
        self._entered = False

    def __enter__(self) -> PrefectDaskShards:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._entered:
            self.runner.__exit__(*exc)
            self._entered = False

    def start(self) -> None:
        """Start (or connect to) the cluster once."""
        if self._entered:
            return
        self.runner.__enter__()
        self._entered = True
        try:
            client = self.runner.client
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as e:
            self.__exit__(None, None, None)
            raise ConfigError(f"dask_scheduler {self.scheduler!r}: cannot use it ({str(e).splitlines()[0]}): start a "
                              "scheduler and workers (dask scheduler; dask worker ADDRESS) or leave dask_scheduler "
                              "unset for a local cluster") from None
        addrs = sorted(client.scheduler_info(n_workers=-1)["workers"])
        self.addresses = addrs[: self.requested] if self.scheduler and self.requested > 0 else addrs

    @property
    def workers(self) -> int:
        self.start()
        return len(self.addresses)

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], names: Sequence[str]) -> list[R]:
        from prefect_dask.task_runners import PrefectDaskFuture

        self.start()
        client = self.runner.client
        futures = []
        for i, (job, name) in enumerate(zip(jobs, names, strict=True)):
            f = client.submit(shard_task, parameters={"fn": fn, "job": job, "name": name}, return_type="state",
                              workers=[self.addresses[i % len(self.addresses)]], allow_other_workers=True, pure=False)
            futures.append(PrefectDaskFuture(wrapped_future=f, task_run_id=f.task_run_id))
        return results_in_order(names, futures)


def shard_executor(workers: int, scheduler: str | None) -> Any:
    """A context giving the executor the settings ask for: :class:`PrefectDaskShards`, or None (sequential)."""
    if scheduler or workers > 1:
        return PrefectDaskShards(workers=workers, scheduler=scheduler)
    return contextlib.nullcontext(None)
