"""Scoring and A/B generation in shards on a real dask.distributed LocalCluster (2 worker processes), SmolLM2 Q4_1.

The claim: a sharded run gives the sequential run's numbers bit for bit (np.array_equal, not allclose), and
writes the very same score cache entry; a shard that fails gives the usual one-line error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from so8t.calibrate import scoring
from so8t.decision import LABELS
from so8t.errors import ConfigError, ModelError
from tests.fixtures.required import require_module, smollm2_gguf

REPO = Path(__file__).resolve().parents[2]
llama_cpp = require_module("llama_cpp")
distributed = require_module("distributed")


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def records() -> tuple[list[str], list[str]]:
    """Three records of each label (English and Japanese), 9 in all: shards of 5 and 4."""
    texts, labels = scoring.read_labelled(REPO / "data" / "safety_val.jsonl")
    picked = [i for lab in LABELS for i in [j for j, y in enumerate(labels) if y == lab][:3]]
    return [texts[i] for i in picked], [labels[i] for i in picked]


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 processes for the module; a lost worker fails its task at once (no retries)."""
    import dask

    from so8t.shards import DaskShards

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), DaskShards(workers=2) as ex:
        assert ex.workers == 2
        yield ex


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))


def test_thread_count_does_not_change_the_scores(gguf, records):
    """Why sharding may give each instance fewer threads: ggml splits rows over threads, never a row's reduction."""
    few = (records[0][::4], records[1][::4])
    one = scoring.score_gguf(gguf, *few, n_ctx=1024, n_threads=1, use_cache=False, progress=False)
    two = scoring.score_gguf(gguf, *few, n_ctx=1024, n_threads=2, use_cache=False, progress=False)
    assert np.array_equal(one.z, two.z)


@pytest.mark.parametrize("mode", ["first-token", "sequence"])
def test_sharded_scores_are_bit_identical_to_sequential(gguf, records, cluster, mode):
    seq = scoring.score_gguf(gguf, *records, mode=mode, n_ctx=1024, n_threads=1, use_cache=False, progress=False)
    dsk = scoring.score_gguf(gguf, *records, mode=mode, n_ctx=1024, use_cache=False, progress=False, executor=cluster)
    assert np.array_equal(seq.z, dsk.z)
    assert dsk.mode == seq.mode == mode and dsk.label_token_ids == seq.label_token_ids
    assert dsk.n_prefix_tokens == seq.n_prefix_tokens and dsk.cache_key == seq.cache_key
    shards = dsk.extra["shards"]
    assert len(shards) == 2 and shards[0].start == 0 and shards[0].stop == shards[1].start and shards[1].stop == 9
    pids = {t.worker.rsplit(":", 1)[1] for t in shards}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two worker processes, not this one
    assert all(t.threads == 1 for t in shards)  # 2 workers on 2 cores: 1 llama.cpp thread each (the rule)
    assert all(t.load_seconds > 0 for t in shards)


def test_sharded_run_writes_the_sequential_cache_entry_byte_for_byte(gguf, records, cluster, tmp_path, monkeypatch):
    from so8t.calibrate.score_cache import score_cache_dir

    entries = {}
    for name, ex in (("seq", None), ("dask", cluster)):
        monkeypatch.setenv("SO8T_CACHE", str(tmp_path / name))
        s = scoring.score_gguf(gguf, *records, n_ctx=1024, n_threads=1, progress=False, executor=ex)
        assert not s.from_cache
        entries[name] = (s.cache_key, (score_cache_dir() / f"{s.cache_key}.npz").read_bytes(),
                         json.loads((score_cache_dir() / f"{s.cache_key}.json").read_text()))
    (k1, npz1, meta1), (k2, npz2, meta2) = entries["seq"], entries["dask"]
    assert k1 == k2 and npz1 == npz2
    assert {k: v for k, v in meta1.items() if k != "seconds"} == {k: v for k, v in meta2.items() if k != "seconds"}
    # and the sequential run reads the sharded run's entry as its own
    hit = scoring.score_gguf(gguf, *records, n_ctx=1024, n_threads=1, progress=False)
    assert hit.from_cache and hit.cache_key == k2


def test_calibrate_cli_and_evaluate_on_dask_match_sequential(gguf, records, cluster, tmp_path):
    from so8t.calibrate.stage import load_calibration_results, load_calibration_scores
    from so8t.cli import main

    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in zip(*records)),
                    encoding="utf-8")
    common = ["calibrate", "--model", str(gguf), "--val_data", str(data), "--n_ctx", "1024", "--no_cache"]
    assert main(common + ["--output_dir", str(tmp_path / "seq"), "--n_threads", "1"]) == 0
    assert main(common + ["--output_dir", str(tmp_path / "dask"), "--dask_workers", "2"]) == 0
    a, b = load_calibration_scores(tmp_path / "seq"), load_calibration_scores(tmp_path / "dask")
    assert np.array_equal(a["z"], b["z"]) and np.array_equal(a["y"], b["y"])
    ra, _ = load_calibration_results(tmp_path / "seq" / "calibration_results.json")
    rb, _ = load_calibration_results(tmp_path / "dask" / "calibration_results.json")
    assert ra.temperature == rb.temperature and ra.tau_deny == rb.tau_deny and ra.tau_escalate == rb.tau_escalate

    # so8t evaluate on the cluster: its decisions are those the sequential scores give under the calibration
    from so8t.calibrate.evaluate import EvaluateConfig, evaluate
    from so8t.calibrate.metrics import confusion_matrix, decide, softmax

    report = evaluate(EvaluateConfig(model=str(gguf), data=str(data), output_dir=str(tmp_path / "eval"), n_ctx=1024,
                                     calibration=str(tmp_path / "seq" / "calibration_results.json"), no_cache=True),
                      executor=cluster)
    d = decide(softmax(a["z"], ra.temperature), ra.tau_deny, ra.tau_escalate)
    assert report.files[0].overall.confusion_matrix == confusion_matrix(a["y"], d).tolist()


def test_unreachable_scheduler_is_one_line_and_writes_nothing(gguf, records, tmp_path, monkeypatch, capsys):
    import so8t.shards
    from so8t.cli import main

    monkeypatch.setattr(so8t.shards, "CONNECT_TIMEOUT_S", 2.0)
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in zip(*records)),
                    encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["calibrate", "--model", str(gguf), "--val_data", str(data), "--output_dir", str(out), "--no_cache",
               "--dask_scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("so8t: error:")]
    assert rc == 2 and len(errors) == 1 and err[-1] == errors[0], err  # one error line (log lines above it)
    assert errors[0].startswith("so8t: error: dask_scheduler 'tcp://127.0.0.1:9': cannot connect")
    assert not out.exists()


def test_a_shard_failing_on_its_worker_is_one_line_naming_the_shard(gguf, records, cluster, tmp_path):
    vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        plan = scoring._prepare(vocab, records[0], mode="auto", label_texts=LABELS, chat_template=None, n_ctx=1024,
                                prompt=scoring.DEFAULT_DECISION_PROMPT, model_name=gguf.name)
    finally:
        vocab.close()
    missing = tmp_path / "not-on-the-worker.gguf"  # the path a worker cannot open
    shards = scoring.plan_scoring_shards(missing, plan, 2, 1024, 1)
    with pytest.raises(ModelError) as e:
        cluster.map(scoring.score_shard, shards, ["scoring shard 1/2 (records 1-5)", "scoring shard 2/2 (records 6-9)"])
    msg = str(e.value)
    assert msg.startswith("scoring shard 1/2 (records 1-5): ") and str(missing) in msg and "\n" not in msg


def _die(_job):
    os._exit(3)  # the worker process dies mid-task (as on an out-of-memory kill)


def test_a_lost_worker_is_one_line(cluster):
    with pytest.raises(ModelError) as e:
        cluster.map(_die, [0], ["scoring shard 1/1 (records 1-9)"])
    msg = str(e.value)
    assert msg.startswith("scoring shard 1/1 (records 1-9): its dask worker was lost (KilledWorker") and "\n" not in msg
    cluster.client.wait_for_workers(2, timeout=60)  # the nanny restarts it; later tests get both workers back


def test_bad_input_is_refused_before_any_shard_runs(gguf, cluster):
    from so8t.errors import DataError

    with pytest.raises(DataError, match="record 2: field 'text' is empty"):
        scoring.score_gguf(gguf, ["fine", "  "], ["ALLOW", "DENY"], use_cache=False, executor=cluster)
    with pytest.raises(ConfigError, match="at least 1 worker"):
        from so8t.shards import DaskShards

        DaskShards(workers=0)


def test_ab_generations_and_scores_on_dask_match_sequential(gguf, cluster, tmp_path):
    from so8t.ab.runner import ABConfig, run_ab

    # A and B: the same weights under two file names (so each worker really opens two models)
    b = tmp_path / "b.gguf"
    os.link(gguf, b) if os.stat(gguf).st_dev == os.stat(tmp_path).st_dev else b.write_bytes(gguf.read_bytes())
    cfg = dict(model_a=str(gguf), model_b=str(b), limit=4, max_new_tokens=8, n_ctx=1024, skip_memory=True,
               n_bootstrap=100, no_cache=True)
    seq = run_ab(ABConfig(**cfg, n_threads=1), progress=False)
    dsk = run_ab(ABConfig(**cfg), progress=False, executor=cluster)
    for x, y in zip(seq.items, dsk.items, strict=True):
        assert (x.output_a, x.output_b, x.new_tokens_a, x.new_tokens_b, x.stopped_a, x.stopped_b) == \
               (y.output_a, y.output_b, y.new_tokens_a, y.new_tokens_b, y.stopped_a, y.stopped_b)
    assert any(x.new_tokens_a for x in seq.items)  # something was generated
    assert seq.quality.model_dump() == dsk.quality.model_dump()
    # the safety comparison (decisions, rates, McNemar) is the same; its scoring block differs in timings only
    assert seq.safety.model_dump(exclude={"scoring"}) == dsk.safety.model_dump(exclude={"scoring"})
    for k in ("a", "b"):
        assert seq.safety.scoring[k]["cache_key"] == dsk.safety.scoring[k]["cache_key"]
