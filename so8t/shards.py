"""Fan-out over shards: contiguous slices of the records, one llama.cpp instance each, merged in order.

Scoring (:func:`so8t.calibrate.scoring.score_gguf`, hence ``so8t calibrate`` and ``so8t evaluate``)
and the A/B generations (:func:`so8t.ab.runner.run_ab`) accept a *shard executor*. The records are
split into contiguous shards (:func:`shard_ranges`), one per worker; each shard is worked by a
function that opens its own model with :func:`so8t.llama.open_llama` and runs the very per-record
code the sequential run runs; the parts are put back in record order (:func:`merge_in_order`).
Nothing about the result depends on the number of shards: the score cache key does not include it,
and the merged array is bit-identical to the sequential one (``tests/integration/test_dask_scoring.py``;
docs/orchestration.md, *Scoring on Dask*, says why).

Executors (anything with ``workers`` and ``map``):

- ``None`` everywhere means the sequential, in-process run (the default).
- :class:`DaskShards`: a dask.distributed cluster, plain (``--dask_workers N`` starts a
  ``LocalCluster`` of N worker processes for the call; ``--dask_scheduler ADDRESS`` uses the
  workers of a running scheduler). dask is not Prefect: ``so8t`` may use it.
- ``tasks.dask_shards.PrefectDaskShards``: each shard a Prefect task run on prefect-dask's
  ``DaskTaskRunner`` (the flows' path).

Threads: each llama.cpp instance takes ``--n_threads`` when it is positive, else the thread count of
the dask worker it runs on (:func:`worker_threads`). A local cluster of N workers on C logical cores
gives each worker ``max(1, C // N)`` threads (:func:`local_threads_per_worker`), so N instances
share the cores instead of each spinning on all of them; on a scheduler of your own, start each
worker with as many threads (``dask worker ADDRESS --nthreads T``) as its llama.cpp should use.
One shard runs per worker at a time: shards are pinned to workers (others may take a shard only
when its worker is lost).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from so8t.errors import ConfigError, ModelError, So8tError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: --help of the dask settings, shared by so8t calibrate, so8t evaluate, so8t ab and the flow parameters.
DASK_WORKERS_HELP = ("Score (and, for A/B, generate) in N contiguous shards on a local dask cluster of N worker processes, "
                     "one llama.cpp instance each with max(1, cores // N) threads unless --n_threads is set; 0 or 1: "
                     "sequentially in this process. With --dask_scheduler: use the first N of its workers (0: all). "
                     "The results and the score cache entry are the same as a sequential run's.")
DASK_SCHEDULER_HELP = ("Address of a running dask scheduler (e.g. tcp://10.0.0.5:8786) whose workers score one shard "
                       "each; every worker must see the model file at the same path and gives its llama.cpp its own "
                       "thread count (dask worker ADDR --nthreads T) unless --n_threads is set. Default: none.")

#: Seconds to wait for a scheduler given by address (and for its first worker).
CONNECT_TIMEOUT_S = 20.0


def shard_ranges(n: int, n_shards: int, weights: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges covering ``range(n)``, ``min(n_shards, n)`` of them, none empty.

    Without ``weights`` the shards hold near-equal record counts (the first ``n % k`` one more). With
    ``weights`` (one per record: the work it costs, e.g. the tokens scoring evaluates for it) each cut is
    put where the running total is nearest ``i / k`` of the whole, so the shards' work is balanced to
    within one record's weight.

    Raises:
        ValueError: ``n < 0``, ``n_shards < 1``, or not one weight per record.
    """
    if n < 0 or n_shards < 1:
        raise ValueError(f"shard_ranges({n}, {n_shards}): need n >= 0 and n_shards >= 1")
    k = min(n_shards, n)
    if k == 0:
        return []
    if weights is None:
        base, extra = divmod(n, k)
        sizes = [base + (1 if i < extra else 0) for i in range(k)]
        cuts = [0]
        for size in sizes:
            cuts.append(cuts[-1] + size)
    else:
        import bisect
        import itertools

        if len(weights) != n:
            raise ValueError(f"shard_ranges: {len(weights)} weights for {n} records")
        cum = [0.0, *itertools.accumulate(max(0.0, float(w)) for w in weights)]  # cum[j] = weight of records < j
        cuts = [0]
        for i in range(1, k):
            target = cum[-1] * i / k
            j = bisect.bisect_left(cum, target)
            if j > 0 and target - cum[j - 1] <= cum[min(j, n)] - target:
                j -= 1  # the cut just before is as near or nearer
            cuts.append(min(max(j, cuts[-1] + 1), n - (k - i)))  # every shard keeps at least one record
        cuts.append(n)
    return [(cuts[i], cuts[i + 1]) for i in range(k)]


def merge_in_order(parts: Sequence[tuple[int, Sequence[Any]]], n: int) -> list[Any]:
    """The items of ``(start, items)`` parts, in record order; they must tile ``range(n)`` exactly.

    Raises:
        ValueError: A gap, an overlap, or a count that is not ``n`` (a bug in the caller, never input).
    """
    out: list[Any] = []
    for start, items in sorted(parts, key=lambda p: p[0]):
        if start != len(out):
            raise ValueError(f"shard starting at record {start} does not follow the {len(out)} records before it")
        out.extend(items)
    if len(out) != n:
        raise ValueError(f"shards hold {len(out)} records, expected {n}")
    return out


def local_threads_per_worker(workers: int, cores: int | None = None) -> int:
    """llama.cpp threads of each of ``workers`` local instances: ``max(1, cores // workers)``.

    Args:
        workers: Worker processes on this machine.
        cores: Logical cores (default: ``os.cpu_count()``).
    """
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def worker_threads(n_threads: int = 0) -> int:
    """Threads for the llama.cpp instance of the calling shard.

    ``n_threads`` when positive; else, inside a dask worker, that worker's thread count; else the
    sequential default (:func:`so8t.llama.default_threads`).
    """
    if n_threads > 0:
        return n_threads
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        from so8t.llama import default_threads

        return default_threads()


def where() -> str:
    """``host:pid`` of this process (shard results say where they ran)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ShardTiming:
    """Where one shard ran and what it cost."""

    start: int
    stop: int
    worker: str
    threads: int
    load_seconds: float
    work_seconds: float


class ShardExecutor(Protocol):
    """Runs one function over shard jobs, one job per worker at a time; results in the jobs' order."""

    workers: int

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], names: Sequence[str]) -> list[R]:
        """``[fn(job) for job in jobs]``, run on the workers; ``names`` label the jobs in errors."""
        ...


def shard_error(name: str, e: BaseException) -> So8tError | None:
    """The one-line error for a shard that failed, or None for a bug (which keeps its traceback).

    A user error (:class:`~so8t.errors.So8tError`, raised on the worker and sent back) keeps its type and
    gains the shard's name; a lost worker (dask's ``KilledWorker``: the process died, e.g. out of memory) or a
    lost connection becomes a :class:`~so8t.errors.ModelError`.
    """
    if isinstance(e, So8tError):
        return type(e)(f"{name}: {_first_line(e)}")
    if type(e).__name__ in ("KilledWorker", "CommClosedError", "FutureCancelledError") or isinstance(e, OSError):
        return ModelError(f"{name}: its dask worker was lost ({type(e).__name__}: {_first_line(e)}): see the worker's "
                          "log (out of memory? a crash in llama.cpp?) and run again")
    return None


class DaskShards:
    """A plain dask.distributed executor: a ``LocalCluster`` of ``workers`` processes, or a running scheduler.

    Use as a context manager; the cluster (or the connection) starts when first needed, so a run
    that finds its scores in the cache starts nothing, and lives until ``__exit__``: ``map`` may be
    called several times in between (A/B: two models' scores, then the generations).

    Args:
        workers: Local worker processes (``scheduler`` None), at least 1; with ``scheduler``, 0 means
            every worker the scheduler has, N > 0 the first N of them.
        scheduler: Address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``; None: a local cluster.
        threads_per_worker: Threads of each local worker (0: :func:`local_threads_per_worker`).

    Raises:
        ConfigError: The scheduler cannot be reached, or has no worker (when first needed).
    """

    def __init__(self, workers: int = 0, scheduler: str | None = None, threads_per_worker: int = 0):
        if scheduler is None and workers < 1:
            raise ConfigError(f"dask_workers={workers}: a local dask cluster needs at least 1 worker")
        self.scheduler = scheduler
        self.requested = workers
        self.threads_per_worker = threads_per_worker or local_threads_per_worker(workers)
        self.cluster: Any = None
        self.client: Any = None
        self.addresses: list[str] = []
        self.start_seconds: float | None = None

    def __enter__(self) -> DaskShards:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and the local cluster (a running scheduler and its workers stay)."""
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    @property
    def workers(self) -> int:
        """How many workers (hence shards): known once started, so asking starts the cluster."""
        self.start()
        return len(self.addresses)

    def start(self) -> None:
        """Start the local cluster, or connect to the scheduler and wait for a worker (once)."""
        if self.client is not None:
            return
        t0 = time.perf_counter()
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:
            raise ConfigError(f"dask.distributed is not importable ({e}): pip install 'dask[distributed]'") from None
        if self.scheduler is None:
            # memory_limit=0: llama.cpp maps the weights; the nanny's RSS limit would kill a worker for pages it
            # does not own. No dashboard: nothing to serve, no port to take.
            self.cluster = LocalCluster(n_workers=self.requested, threads_per_worker=self.threads_per_worker,
                                        processes=True, memory_limit=0, dashboard_address=None,
                                        silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as e:
                raise ConfigError(f"dask_scheduler {self.scheduler!r}: cannot connect ({_first_line(e)}): start one "
                                  "(dask scheduler; dask worker ADDRESS) or leave dask_scheduler unset for a local "
                                  "cluster") from None
            try:
                self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                self.close()
                raise ConfigError(f"dask_scheduler {self.scheduler!r}: no worker joined within {CONNECT_TIMEOUT_S:.0f} s "
                                  f"({_first_line(e)}): start workers with dask worker {self.scheduler}") from None
        addrs = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        if self.scheduler is not None and self.requested > 0:
            addrs = addrs[: self.requested]
        self.addresses = addrs
        self.start_seconds = time.perf_counter() - t0
        logger.info("dask: %d worker(s) %s (%s), ready in %.1f s", len(addrs), addrs,
                    "local cluster" if self.scheduler is None else self.scheduler, self.start_seconds)

    def map(self, fn: Callable[[T], R], jobs: Sequence[T], names: Sequence[str]) -> list[R]:
        """``[fn(job) for job in jobs]``, job i pinned to worker ``i % workers`` (another takes it if that one is lost)."""
        self.start()
        futures = [self.client.submit(fn, job, key=f"so8t-shard-{i}-{time.monotonic_ns()}", pure=False,
                                      workers=[self.addresses[i % len(self.addresses)]], allow_other_workers=True)
                   for i, job in enumerate(jobs)]
        try:
            return results_in_order(names, futures)
        finally:
            for fut in futures:
                fut.cancel()


def results_in_order(names: Sequence[str], futures: Sequence[Any]) -> list[Any]:
    """Each future's result, in order; a shard that failed on bad input or a lost worker becomes one line
    (:func:`shard_error`), anything else (a bug) is re-raised with its traceback."""
    out = []
    for name, fut in zip(names, futures, strict=True):
        try:
            out.append(fut.result())
        except Exception as e:
            err = shard_error(name, e)
            if err is None:
                raise  # a bug: its traceback (dask re-raises the worker's) is what to read
            raise err from None
    return out


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def executor_context(executor: ShardExecutor | None, workers: int, scheduler: str | None) -> Any:
    """A context manager giving the executor to use: ``executor`` as given (its owner opens and closes it),
    else the plain dask one ``workers`` / ``scheduler`` ask for (started on entry, closed on exit), else None."""
    import contextlib

    if executor is not None:
        return contextlib.nullcontext(executor)
    return dask_executor(workers, scheduler) or contextlib.nullcontext(None)


def dask_executor(workers: int, scheduler: str | None) -> DaskShards | None:
    """The plain dask executor the flags ask for (``dask_workers``, ``dask_scheduler``), or None (sequential).

    ``workers`` 0 or 1 without a scheduler is the sequential run: one instance in this process.
    """
    if scheduler:
        return DaskShards(workers=workers, scheduler=scheduler)
    if workers > 1:
        return DaskShards(workers=workers)
    return None
