"""so8t.training.train_data: the datasets-backed loader equals the in-memory encoder, caches, and keeps one-line errors."""

from __future__ import annotations

import json

import pytest

from so8t.training import train_data
from so8t.training.data import encode_dataset, read_jsonl
from so8t.decision import load_decision_prompt
from so8t.errors import DataError
from so8t.training.train_data import TRAIN_COLUMNS, check_file, load_training_data
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))


def _load(spec, tok, cache, **kw):
    return load_training_data(spec, tok, kw.pop("max_length", 48), load_decision_prompt(None), cache_dir=cache,
                              progress=False, **kw)


@pytest.mark.parametrize("label_loss", ["answer", "label_token"])
def test_equals_the_in_memory_encoder_record_for_record(tmp_path, tiny_dataset, tok, label_loss):
    extra = write_jsonl(tmp_path / "more.jsonl", [{"text": "word " * 80, "label": "DENY"}, {"text": "short", "label": "ALLOW"}])
    spec = f"{tiny_dataset},{extra}"
    data, stats = _load(spec, tok, tmp_path / "cache", label_loss=label_loss)
    records = read_jsonl(tiny_dataset) + read_jsonl(extra)
    ref, ref_stats = encode_dataset(records, tok, 48, load_decision_prompt(None), label_loss)
    assert stats == ref_stats and stats.truncated >= 1
    assert len(data) == len(ref) == len(data.dataset)
    assert data.dataset.column_names == list(TRAIN_COLUMNS)
    for i in range(len(ref)):
        assert data.dataset[i] == ref.examples[i], i
    assert data.kinds == ref.kinds
    assert data.lengths == [len(e["input_ids"]) for e in ref.examples]
    assert data.labels == [getattr(r, "label", None) for r in records]
    assert [c.records for c in data.files] == [len(read_jsonl(tiny_dataset)), 2]


def test_arrow_on_disk_and_a_second_load_skips_tokenisation(tmp_path, tiny_dataset, tok, monkeypatch):
    cache = tmp_path / "cache"
    first, _ = _load(str(tiny_dataset), tok, cache)
    files = [f["filename"] for f in first.dataset.cache_files]
    assert files and all(str(cache) in f for f in files)  # memory-mapped Arrow in our cache, not RAM

    def boom(*_a, **_k):
        raise AssertionError("tokenised again although nothing changed")

    monkeypatch.setattr(train_data, "_encode_row", boom)
    again, _ = _load(str(tiny_dataset), tok, cache)
    assert again.fingerprint == first.fingerprint and again.dataset[0] == first.dataset[0]
    # a change of max_length is another encoding
    with pytest.raises(AssertionError, match="tokenised again"):
        _load(str(tiny_dataset), tok, cache, max_length=40)


def test_an_edited_file_is_read_again(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha", "label": "ALLOW"}])
    a, _ = _load(str(path), tok, tmp_path / "cache")
    write_jsonl(path, [{"text": "alpha", "label": "ALLOW"}, {"text": "beta", "label": "DENY"}])
    b, _ = _load(str(path), tok, tmp_path / "cache")
    assert len(a) == 1 and len(b) == 2 and b.labels == ["ALLOW", "DENY"]


def test_bad_data_is_one_line_before_anything_is_cached(tmp_path, tiny_dataset, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok", "label": "ALLOW"}) + "\n" + '{"text": "x", "label": "MAYBE"}\n', encoding="utf-8")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'label': 'MAYBE'") as e:
        _load(f"{tiny_dataset},{bad}", tok, cache)
    assert "\n" not in str(e.value) and not cache.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: no records"):
        check_file(empty)
    with pytest.raises(DataError, match="names no file"):
        _load(" , ", tok, cache)


def test_check_file_hashes_the_bytes(tmp_path):
    import hashlib

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"instruction": "q", "output": "a"}, {"text": "b", "label": "DENY"}])
    c = check_file(path)
    assert c.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert c.records == 3 and c.kinds == {"text": 1, "instruction": 1, "labelled": 1}
