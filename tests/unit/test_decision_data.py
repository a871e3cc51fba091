"""Checks of the bundled real decision data (data/decision_{train,val,test}.jsonl).

Fast (a few seconds, stdlib only): rebuilds in memory and compares bytes, checks the schema,
split disjointness (exact and near-duplicate, computed independently of the build's own
grouping), the reserved-text hash list, and that data/README.md states the real counts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
RESERVED = Path(__file__).resolve().parents[3] / "shared/hooks/reserved.sha256"
SPLITS = ("train", "val", "test")
KEYS = ["text", "label", "source", "category", "lang", "framing"]
SOURCES = {"advbench", "ailuminate", "simple-safety-tests", "gptfuzz", "gptfuzz-jailbreak", "coconot",
           "coconot-contrast", "dolly-ja", "dolly-openqa", "self-instruct", "synthetic"}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_decision_data", DATA / "build_decision_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _read(split: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / f"decision_{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {s: _read(s) for s in SPLITS}


def _norm(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    t = "".join(" " if unicodedata.category(c).startswith("P") else c for c in t)
    return " ".join(t.split())


def _shingles(text: str, lang: str) -> set:
    n = _norm(text)
    if lang == "ja":
        s = n.replace(" ", "")
        return {s[i : i + 4] for i in range(max(1, len(s) - 3))}
    w = n.split()
    return {tuple(w[i : i + 3]) for i in range(max(1, len(w) - 2))}


def test_build_check_is_clean():
    mod = _load_builder()
    res = mod.build(mod.DEFAULT_RESERVED)
    assert not res["report"]["new_reserved_hashes"]
    for name, data in res["files"].items():
        assert (DATA / name).read_bytes() == data, f"data/{name} differs from the build; run data/build_decision_data.py"
    # the output must not depend on the reserved file being present
    res2 = mod.build(None)
    assert res2["files"] == res["files"]


def test_schema(splits):
    for s, rows in splits.items():
        assert rows, s
        for r in rows:
            assert list(r) == KEYS, r
            assert isinstance(r["text"], str) and r["text"] == r["text"].strip() and r["text"]
            assert "\r" not in r["text"]
            assert r["label"] in ("ALLOW", "ESCALATE", "DENY")
            assert r["lang"] in ("en", "ja")
            assert r["source"] in SOURCES
            assert r["framing"] in ("plain", "skilled", "jailbreak")
            assert isinstance(r["category"], str) and r["category"]
            if r["framing"] == "jailbreak":
                assert r["source"] == "gptfuzz-jailbreak" and r["category"].startswith("jailbreak:")
        raw = (DATA / f"decision_{s}.jsonl").read_bytes()
        assert raw.endswith(b"\n") and b"\r\n" not in raw


def test_no_exact_overlap_between_splits(splits):
    seen: dict[str, str] = {}
    for s in SPLITS:
        keys = [_norm(r["text"]) for r in splits[s]]
        assert len(keys) == len(set(keys)), f"duplicate texts inside {s}"
        for k in keys:
            assert seen.setdefault(k, s) == s, f"text in {seen[k]} and {s}: {k[:60]!r}"


def test_no_near_duplicate_across_splits(splits):
    """Jaccard >= 0.7 on word 3-shingles (en) / character 4-grams (ja), checked pair by pair
    for every cross-split pair that shares a rare shingle (a pair at >= 0.7 must share one of
    the least frequent |A| - ceil(0.7|A|) + 1 shingles of the smaller set)."""
    items = [(s, r["lang"], _shingles(r["text"], r["lang"])) for s in SPLITS for r in splits[s]]
    freq = Counter(x for _, lang, sh in items for x in ((lang, y) for y in sh))
    index = defaultdict(set)
    for i, (_, lang, sh) in enumerate(items):
        ranked = sorted(sh, key=lambda y: (freq[(lang, y)], repr(y)))
        for y in ranked[: len(ranked) - int(0.7 * len(ranked) + 1e-9) + 1]:
            index[(lang, y)].add(i)
    checked = set()
    bad = []
    for members in index.values():
        ms = sorted(members)
        for a in range(len(ms)):
            for b in range(a + 1, len(ms)):
                i, j = ms[a], ms[b]
                if items[i][0] == items[j][0] or (i, j) in checked:
                    continue
                checked.add((i, j))
                x, y = items[i][2], items[j][2]
                if len(x & y) / len(x | y) >= 0.7:
                    bad.append((items[i][0], items[j][0]))
    assert not bad, f"{len(bad)} near-duplicate pairs cross splits, e.g. {bad[:3]}"


def test_jailbreak_templates_do_not_cross_splits(splits):
    where = {}
    for s in SPLITS:
        for r in splits[s]:
            if r["framing"] == "jailbreak":
                assert where.setdefault(r["category"], s) == s


def test_no_reserved_text():
    if not RESERVED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{RESERVED} missing in CI")
        pytest.skip(f"{RESERVED} not present")
    reserved = {x.strip() for x in RESERVED.read_text(encoding="utf-8").splitlines() if x.strip()}

    def strings(obj):
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)

    hits = []
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for t in strings(json.loads(line)):
                n = re.sub(r"\s+", " ", t.strip().lower()).strip(" .?!")
                if len(n) >= 20 and hashlib.sha256(n.encode("utf-8")).hexdigest() in reserved:
                    hits.append((path.name, t[:60]))
    assert not hits, hits


def test_readme_counts_match(splits):
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    stated = {}
    for m in re.finditer(r"^\| decision_(\w+) \| (en|ja|all) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", readme, re.M):
        stated[(m.group(1), m.group(2))] = tuple(int(m.group(k)) for k in range(3, 7))
    assert stated, "no decision counts table in data/README.md"
    for s in SPLITS:
        for lang in ("en", "ja", "all"):
            rows = [r for r in splits[s] if lang == "all" or r["lang"] == lang]
            c = Counter(r["label"] for r in rows)
            assert stated[(s, lang)] == (c["ALLOW"], c["ESCALATE"], c["DENY"], len(rows)), (s, lang)


def test_val_has_enough_english_per_side(splits):
    en = [r for r in splits["val"] if r["lang"] == "en"]
    assert sum(r["label"] == "ALLOW" for r in en) >= 120
    assert sum(r["label"] != "ALLOW" for r in en) >= 120
