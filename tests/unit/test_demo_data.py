"""Checks on the bundled demo datasets in data/ and on their generator."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
GENERATOR = DATA / "build_demo_data.py"
LABELS = ("ALLOW", "ESCALATE", "DENY")
SPLITS = ("train", "val")


def _is_japanese(text: str) -> bool:
    """True if ``text`` contains hiragana, katakana or CJK ideographs."""
    return any(
        "\u3040" <= ch <= "\u309f"  # hiragana
        or "\u30a0" <= ch <= "\u30ff"  # katakana
        or "\u4e00" <= ch <= "\u9fff"  # CJK unified ideographs
        for ch in text
    )


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            assert line.endswith("\n"), f"{path.name}:{n} has no trailing newline"
            assert line.strip(), f"{path.name}:{n} is blank"
            obj = json.loads(line)
            assert isinstance(obj, dict), f"{path.name}:{n} is not an object"
            records.append(obj)
    return records


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("so8t_build_demo_data", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def safety() -> dict[str, list[dict]]:
    return {s: _read_jsonl(DATA / f"safety_{s}.jsonl") for s in SPLITS}


@pytest.fixture(scope="module")
def safety_meta(gen) -> list[dict]:
    return gen.build_safety_records()


# ---------------------------------------------------------------- safety files


def test_safety_records_have_exactly_text_and_label(safety):
    for split, recs in safety.items():
        assert recs, split
        for r in recs:
            assert set(r) == {"text", "label"}, r
            assert isinstance(r["text"], str) and r["text"].strip() == r["text"] and r["text"]
            assert r["label"] in LABELS, r


def test_safety_label_counts(safety):
    overall = collections.Counter(r["label"] for recs in safety.values() for r in recs)
    for label in LABELS:
        assert overall[label] >= 300, overall
    # Balanced: no label has more than 10% more records than another.
    assert max(overall.values()) <= 1.1 * min(overall.values()), overall


def test_safety_both_languages_per_label_and_split(safety):
    for split, recs in safety.items():
        for label in LABELS:
            texts = [r["text"] for r in recs if r["label"] == label]
            ja = sum(map(_is_japanese, texts))
            en = len(texts) - ja
            assert ja > 0 and en > 0, (split, label, ja, en)
            assert 0.35 <= ja / len(texts) <= 0.65, (split, label, ja, en)


def test_safety_split_ratio(safety):
    n_train, n_val = len(safety["train"]), len(safety["val"])
    assert 0.15 <= n_val / (n_train + n_val) <= 0.25
    # stratified: every (label, language) cell has roughly the same val share
    for label in LABELS:
        for is_ja in (False, True):
            cell = {
                s: sum(1 for r in safety[s] if r["label"] == label and _is_japanese(r["text"]) == is_ja)
                for s in SPLITS
            }
            assert 0.15 <= cell["val"] / (cell["train"] + cell["val"]) <= 0.25, (label, is_ja, cell)


def test_safety_no_duplicates_and_no_leak(safety):
    for split, recs in safety.items():
        texts = [r["text"] for r in recs]
        assert len(texts) == len(set(texts)), f"duplicate text in {split}"
    assert not {r["text"] for r in safety["train"]} & {r["text"] for r in safety["val"]}


def test_metadata_matches_files(safety, safety_meta):
    for split in SPLITS:
        want = [{"text": r["text"], "label": r["label"]} for r in safety_meta if r["split"] == split]
        assert want == safety[split]
    for r in safety_meta:
        assert r["lang"] == ("ja" if _is_japanese(r["text"]) else "en"), r


def test_content_slots_are_disjoint_between_splits(safety_meta):
    slots = {s: {r["slot_id"] for r in safety_meta if r["split"] == s} for s in SPLITS}
    assert not slots["train"] & slots["val"]
    surfaces = {s: {r["slot"].lower() for r in safety_meta if r["split"] == s} for s in SPLITS}
    assert not surfaces["train"] & surfaces["val"]
    # many distinct slots per (language, label) so the model has to generalise
    per_cell = collections.Counter((r["lang"], r["label"]) for r in {(r["slot_id"], r["lang"], r["label"]): r for r in safety_meta}.values())
    for lang in ("en", "ja"):
        for label in LABELS:
            assert per_cell[(lang, label)] >= 40, per_cell


def test_slot_inserted_verbatim(safety_meta):
    for r in safety_meta:
        assert r["text"].count(r["slot"]) == 1, r
        assert r["text"].replace(r["slot"], "{x}") == r["frame"].replace("{X}", "{x}"), r


# ---------------------------------------------------------------- frame balance


def test_every_frame_used_with_every_label_near_uniformly(gen, safety_meta):
    for lang in ("en", "ja"):
        frame_ids = {f"{lang}-{i:02d}" for i in range(len(gen.FRAMES[lang]))}
        assert len(frame_ids) >= 10
        for split in (None, *SPLITS):
            recs = [r for r in safety_meta if r["lang"] == lang and (split is None or r["split"] == split)]
            counts = collections.Counter((r["frame_id"], r["label"]) for r in recs)
            used = {f for f, _ in counts}
            assert used == frame_ids, (lang, split, frame_ids - used)
            for fid in sorted(frame_ids):
                per_label = [counts[(fid, label)] for label in LABELS]
                assert min(per_label) > 0, (lang, split, fid, per_label)
                assert max(per_label) / min(per_label) <= 2, (lang, split, fid, per_label)
                # chi-square statistic against a uniform distribution over labels
                n = sum(per_label)
                chi2 = sum((c - n / 3) ** 2 / (n / 3) for c in per_label)
                assert chi2 < 5.99, (lang, split, fid, per_label)  # 95% point, 2 dof


def test_frame_alone_does_not_predict_label(safety_meta):
    """Majority label per frame (text with the slot cut out), fitted on train, is at chance on val."""

    def frame_key(r):
        return r["text"].replace(r["slot"], "\x00")

    train_counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in safety_meta:
        if r["split"] == "train":
            train_counts[frame_key(r)][r["label"]] += 1
    overall = collections.Counter(r["label"] for r in safety_meta if r["split"] == "train")
    fallback = max(LABELS, key=lambda lb: (overall[lb], -LABELS.index(lb)))

    def predict(r):
        c = train_counts.get(frame_key(r))
        if not c:
            return fallback
        return max(LABELS, key=lambda lb: (c[lb], -LABELS.index(lb)))

    val = [r for r in safety_meta if r["split"] == "val"]
    acc = sum(predict(r) == r["label"] for r in val) / len(val)
    assert acc <= 0.40, acc


def test_text_length_alone_does_not_predict_label(safety_meta):
    """Majority label per length octile (fitted on train, per language) stays near chance on val."""
    correct = total = 0
    for lang in ("en", "ja"):
        tr = [r for r in safety_meta if r["split"] == "train" and r["lang"] == lang]
        va = [r for r in safety_meta if r["split"] == "val" and r["lang"] == lang]
        lengths = sorted(len(r["text"]) for r in tr)
        cuts = [lengths[len(lengths) * q // 8] for q in range(1, 8)]

        def bin_of(r, cuts=cuts):
            return sum(len(r["text"]) > c for c in cuts)

        counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for r in tr:
            counts[bin_of(r)][r["label"]] += 1
        for r in va:
            c = counts.get(bin_of(r)) or collections.Counter({"ALLOW": 1})
            correct += c.most_common(1)[0][0] == r["label"]
            total += 1
    assert correct / total <= 0.5, correct / total


# ---------------------------------------------------------------- instructions


@pytest.fixture(scope="module")
def instructions() -> dict[str, list[dict]]:
    return {s: _read_jsonl(DATA / f"instructions_{s}.jsonl") for s in SPLITS}


def test_instruction_schema_and_counts(instructions):
    assert 250 <= len(instructions["train"]) <= 350
    assert 40 <= len(instructions["val"]) <= 80
    for split, recs in instructions.items():
        for r in recs:
            assert set(r) in ({"instruction", "output"}, {"instruction", "output", "thinking"}), r
            assert all(isinstance(v, str) and v.strip() for v in r.values()), r
        no_think = sum("thinking" not in r for r in recs) / len(recs)
        assert 0.1 <= no_think <= 0.3, (split, no_think)
        ja = sum(_is_japanese(r["instruction"]) for r in recs) / len(recs)
        assert 0.35 <= ja <= 0.65, (split, ja)


def test_instruction_no_duplicates_and_no_leak(instructions):
    for split, recs in instructions.items():
        ins = [r["instruction"] for r in recs]
        assert len(ins) == len(set(ins)), split
    assert not {r["instruction"] for r in instructions["train"]} & {r["instruction"] for r in instructions["val"]}


def test_instruction_outputs_are_short(instructions):
    for recs in instructions.values():
        for r in recs:
            assert len(r["output"]) <= 160, r


def test_python_snippet_answers_are_what_python_prints(instructions):
    checked = 0
    for recs in instructions.values():
        for r in recs:
            ins = r["instruction"]
            if not ins.startswith(("What does this Python code print?", "次のPythonコードは何を出力しますか？")):
                continue
            code = ins.split("\n\n", 1)[1]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, "<snippet>", "exec"), {})  # generated by data/build_demo_data.py
            printed = buf.getvalue().strip()
            assert printed in r["output"], (code, printed, r["output"])
            checked += 1
    assert checked >= 10


# ---------------------------------------------------------------- text sample, README, generator


def test_text_sample():
    recs = _read_jsonl(DATA / "text_sample.jsonl")
    assert 40 <= len(recs) <= 60
    for r in recs:
        assert set(r) == {"text"} and r["text"].strip(), r
    ja = sum(_is_japanese(r["text"]) for r in recs)
    assert 0 < ja < len(recs)
    assert len({r["text"] for r in recs}) == len(recs)


def test_readme_counts_are_current(gen):
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert gen.summary_markdown() in readme, "paste `python data/build_demo_data.py --stats` into data/README.md"
    assert "CC0-1.0" in readme


def test_generator_check_passes():
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generator_is_deterministic(gen):
    assert gen.build_files() == gen.build_files()


def test_generator_check_fails_on_stale_files(tmp_path):
    copy = tmp_path / "build_demo_data.py"
    copy.write_bytes(GENERATOR.read_bytes())
    (tmp_path / "generator_cli.py").write_bytes((DATA / "generator_cli.py").read_bytes())
    for name in ("safety_train.jsonl", "safety_val.jsonl", "instructions_train.jsonl",
                 "instructions_val.jsonl", "text_sample.jsonl"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    (tmp_path / "safety_val.jsonl").write_text('{"text": "tampered", "label": "ALLOW"}\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, str(copy), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "safety_val.jsonl" in proc.stderr
