"""Cache keys: content of inputs, parameters and task source; outputs never change the key."""

from __future__ import annotations

from types import SimpleNamespace

from tasks.caching import ContentHash
from so8t.digests import path_digest


def _key(policy, fn, inputs):
    return policy.compute_key(SimpleNamespace(task=SimpleNamespace(fn=fn)), inputs, {})


def stage_a(cfg):
    return cfg


def stage_b(cfg):
    return cfg * 2


def test_key_follows_input_content_not_output_content(tmp_path):
    data, out = tmp_path / "data.jsonl", tmp_path / "out"
    data.write_text('{"text": "a"}\n')
    out.mkdir()
    policy = ContentHash(input_paths=lambda p: [p["data"]])
    inputs = {"data": str(data), "out": str(out)}
    k1 = _key(policy, stage_a, inputs)
    (out / "checkpoint-1").mkdir()
    (out / "weights.bin").write_bytes(b"new output")
    assert _key(policy, stage_a, inputs) == k1, "writing outputs must not invalidate the cache"
    data.write_text('{"text": "b"}\n')
    k2 = _key(policy, stage_a, inputs)
    assert k2 != k1, "changed input data must re-run the stage"
    assert _key(policy, stage_b, inputs) != k2, "changed task source must re-run the stage"
    assert _key(policy, stage_a, {**inputs, "lr": 1e-3}) != k2, "changed parameters must re-run the stage"


def test_directory_digest_ignores_hidden_entries(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    d1 = path_digest(tmp_path)
    (tmp_path / ".prefect-cache").mkdir()
    (tmp_path / ".prefect-cache" / "rec").write_text("x")
    (tmp_path / ".lock").write_text("")
    assert path_digest(tmp_path) == d1
    (tmp_path / "b.txt").write_text("b")
    assert path_digest(tmp_path) != d1
    assert path_digest(tmp_path / "nope").startswith("missing:")
