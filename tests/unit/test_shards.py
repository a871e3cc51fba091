"""so8t.shards: contiguous shard plans, the in-order merge, the thread rule, one-line shard errors."""

from __future__ import annotations

import pytest

from so8t.errors import DataError, ModelError
from so8t.shards import local_threads_per_worker, merge_in_order, shard_error, shard_ranges, worker_threads


@pytest.mark.parametrize("n, k", [(0, 1), (1, 1), (1, 4), (7, 2), (10, 3), (1000, 2), (5, 5), (3, 8)])
def test_shard_ranges_tile_the_records_contiguously(n, k):
    ranges = shard_ranges(n, k)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))  # every record once, in order
    assert len(ranges) == min(n, k) and all(b > a for a, b in ranges)  # no empty shard
    sizes = [b - a for a, b in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1  # balanced


@pytest.mark.parametrize("seed", range(20))
def test_weighted_shard_ranges_balance_the_work_to_within_one_record(seed):
    import random

    rng = random.Random(seed)
    n, k = rng.randint(1, 60), rng.randint(1, 5)
    w = [rng.choice([1, 2, 5, 30, 80]) for _ in range(n)]
    ranges = shard_ranges(n, k, w)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    assert len(ranges) == min(n, k) and all(b > a for a, b in ranges)
    loads = [sum(w[a:b]) for a, b in ranges]
    # against brute force over every contiguous split: never worse than the best by more than one record's weight
    import itertools

    best = min(max(sum(w[a:b]) for a, b in zip((0, *cuts), (*cuts, n)))
               for cuts in itertools.combinations(range(1, n), min(n, k) - 1)) if n <= 14 else None
    if best is not None:
        assert max(loads) <= best + max(w)
    assert max(loads) <= sum(w) / len(ranges) + max(w)


def test_weighted_shard_ranges_follow_the_tokens():
    # 500 long then 500 short records: equal counts would give one shard twice the work of the other
    w = [60] * 500 + [30] * 500
    (a, b), (c, d) = shard_ranges(1000, 2, w)
    assert (a, d) == (0, 1000) and b == c and abs(sum(w[:b]) - sum(w[b:])) <= 60
    assert b < 500


def test_shard_ranges_refuses_nonsense():
    with pytest.raises(ValueError):
        shard_ranges(5, 0)
    with pytest.raises(ValueError):
        shard_ranges(-1, 2)
    with pytest.raises(ValueError):
        shard_ranges(3, 2, [1.0, 2.0])


def test_merge_in_order_restores_record_order_whatever_order_parts_arrive_in():
    parts = [(4, ["e", "f"]), (0, ["a", "b"]), (2, ["c", "d"])]
    assert merge_in_order(parts, 6) == list("abcdef")


@pytest.mark.parametrize("parts, n", [([(0, [1, 2]), (3, [4])], 4),  # a gap
                                      ([(0, [1, 2]), (1, [2, 3])], 3),  # an overlap
                                      ([(0, [1, 2])], 3)])  # too few
def test_merge_in_order_refuses_parts_that_do_not_tile(parts, n):
    with pytest.raises(ValueError):
        merge_in_order(parts, n)


@pytest.mark.parametrize("workers, cores, expected", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_local_threads_split_the_cores(workers, cores, expected):
    assert local_threads_per_worker(workers, cores) == expected


def test_worker_threads_outside_dask_is_the_sequential_default():
    from so8t.llama import default_threads

    assert worker_threads(3) == 3
    assert worker_threads(0) == default_threads()


def test_shard_error_keeps_user_errors_one_line_and_leaves_bugs_alone():
    e = shard_error("scoring shard 2/2 (records 4-6 of m.gguf)", DataError("bad record\nsecond line"))
    assert isinstance(e, DataError) and str(e) == "scoring shard 2/2 (records 4-6 of m.gguf): bad record"

    class KilledWorker(Exception):  # dask's name for a task whose worker died
        pass

    lost = shard_error("scoring shard 1/2", KilledWorker("Attempted to run task on 1 different workers"))
    assert isinstance(lost, ModelError) and "\n" not in str(lost) and "worker was lost" in str(lost)
    assert shard_error("scoring shard 1/2", ZeroDivisionError("a bug")) is None


def test_results_in_order_maps_failures_like_shard_error():
    from concurrent.futures import Future

    from so8t.shards import results_in_order

    def done(value=None, exc=None):
        f = Future()
        f.set_exception(exc) if exc is not None else f.set_result(value)
        return f

    assert results_in_order(["s1", "s2"], [done([1, 2]), done([3])]) == [[1, 2], [3]]
    with pytest.raises(DataError, match=r"^s2: bad record$"):
        results_in_order(["s1", "s2"], [done([1]), done(exc=DataError("bad record\nmore"))])
    with pytest.raises(ZeroDivisionError):  # a bug keeps its own type and traceback
        results_in_order(["s1"], [done(exc=ZeroDivisionError("bug"))])
