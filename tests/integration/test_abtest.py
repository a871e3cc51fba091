"""A/B evaluation end to end on the real SmolLM2 GGUF (llama.cpp), its CLI, bad input, and the
default evaluation sets (deterministic generator, disjoint from the demo training/validation data).

Throughput tolerance of the self-comparison: the ratio A / B of a model with itself must lie in
[0.5, 2.0]. A and B are interleaved item by item, but this 2-core machine is shared, so single
requests can be slowed several-fold by other processes; the band catches a broken measurement
(e.g. one side timed with the wrong token count), not small drifts.
"""

from __future__ import annotations

import ctypes
import difflib
import importlib.util
import json
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from so8t.ab.stats import CharTokenizer
from tests.fixtures.required import require_module, smollm2_gguf

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"


def _smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def smollm2() -> Path:
    require_module("llama_cpp")
    return _smollm2()


@pytest.fixture(scope="module")
def smollm2_q8(smollm2, tmp_path_factory) -> Path:
    """A different model file: the Q4_1 GGUF requantised to Q8_0 (about 10 s)."""
    import llama_cpp

    out = tmp_path_factory.mktemp("q8") / "smollm2-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 7  # Q8_0
    params.allow_requantize = True
    assert llama_cpp.llama_model_quantize(str(smollm2).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path_factory.getbasetemp() / "so8t-cache"))


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from so8t.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- the default sets
def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split()).strip(" .?!。？！")


def _near(ours: set[str], theirs: set[str], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs whose difflib similarity ratio reaches ``threshold``."""
    hits = []
    for a in ours:
        m = difflib.SequenceMatcher(None)
        m.set_seq2(a)  # seq2 is the one difflib caches
        for b in theirs:
            m.set_seq1(b)
            if m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold:
                hits.append((a, b, m.ratio()))
    return hits


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_sets_are_reproducible_and_well_formed():
    res = subprocess.run([sys.executable, str(DATA / "build_ab_eval.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    from so8t.ab.runner import ABConfig, load_eval_sets

    sets = load_eval_sets(ABConfig(model_a="a.gguf", model_b="b.gguf"))
    assert 60 <= len(sets.instructions) <= 100 and 90 <= len(sets.safety_texts) <= 150
    assert sets.langs.count("en") == sets.langs.count("ja")
    assert all(sets.langs[i] != sets.langs[i + 1] for i in range(0, len(sets.langs) - 1))  # a prefix is balanced
    assert {lab: sets.safety_labels.count(lab) for lab in ("ALLOW", "ESCALATE", "DENY")} == \
        {"ALLOW": 36, "ESCALATE": 36, "DENY": 36}
    assert len(set(sets.instructions)) == len(sets.instructions) and len(set(sets.safety_texts)) == len(sets.safety_texts)
    # every prefix of 6k safety prompts (--limit) holds k of each (language, label) cell
    from so8t.ab.stats import detect_lang

    cells = [(detect_lang(t), lab) for t, lab in zip(sets.safety_texts, sets.safety_labels)]
    for k in (1, 2, 5):
        assert len(set(cells[:6 * k])) == 6 and all(cells[:6 * k].count(c) == k for c in set(cells))
    # even --limit 2 (the flow tests use 4) has an ALLOW and a non-ALLOW prompt, as FAR and FDR need
    assert sorted(set(sets.safety_labels[:2])) in (["ALLOW", "DENY"], ["ALLOW", "ESCALATE"])


def test_default_sets_are_disjoint_from_training_and_validation_data():
    theirs: set[str] = set()
    ours_files = {"ab_eval_quality.jsonl", "ab_eval_safety.jsonl"}  # 'ab_eval' matches '*val*' too
    others = [p for p in sorted(DATA.glob("*train*.jsonl")) + sorted(DATA.glob("*val*.jsonl")) if p.name not in ours_files]
    assert {p.name for p in others} >= {"safety_train.jsonl", "safety_val.jsonl", "instructions_train.jsonl",
                                        "instructions_val.jsonl"}
    for path in others:
        for line in path.read_text(encoding="utf-8").splitlines():
            theirs.update(_norm(v) for v in json.loads(line).values() if isinstance(v, str) and len(v) > 8)
    assert len(theirs) > 1000
    ours = []
    for name in sorted(ours_files):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            ours += [_norm(v) for k, v in json.loads(line).items() if k != "label"]
    overlap = [t for t in ours if t in theirs]
    assert not overlap, f"texts also in training/validation data: {overlap[:3]}"
    # the safety content slots are new too, and none occurs inside any demo text
    ab = _load_module(DATA / "build_ab_eval.py")
    demo = _load_module(DATA / "build_demo_data.py")
    demo_slots = {_norm(r["slot"]) for r in demo.build_safety_records()}
    our_slots = {_norm(r["slot"]) for r in ab.build_safety_records()}
    assert not our_slots & demo_slots
    joined = "\n".join(theirs)
    assert not [s for s in our_slots if s in joined]
    # ... nor a near copy of one (difflib ratio: 1.0 identical; paraphrases of one idea score ~0.6)
    assert not _near(our_slots, demo_slots, 0.75)
    assert not _near(set(ours), {t for t in theirs if len(t) < 200}, 0.8)
    assert not {f.replace("{x}", "").strip() for fs in ab.FRAMES.values() for f in fs} & \
        {f.replace("{x}", "").replace("{X}", "").strip() for fs in demo.FRAMES.values() for f in fs}


# ----------------------------------------------------------------------------- bad input
def _quality(tmp_path: Path, records: list[dict]) -> Path:
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return p


@pytest.mark.parametrize("case", ["missing_reference", "text_only", "empty_quality", "empty_safety", "missing_model",
                                  "not_gguf", "truncated_gguf", "bad_calibration", "one_label",
                                  "prompt_too_long"])
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys, smollm2):
    out = tmp_path / "report"
    args = {"--model_a": str(smollm2), "--model_b": str(smollm2), "--output_dir": str(out), "--limit": "2",
            "--max_new_tokens": "2", "--skip_memory": None}
    if case == "missing_reference":
        args["--quality_data"] = str(_quality(tmp_path, [{"instruction": "Say hi.", "output": "Hi."},
                                                         {"instruction": "Name a colour."}]))
        expect = "field 'output': missing"
    elif case == "text_only":
        args["--quality_data"] = str(_quality(tmp_path, [{"text": "no reference here"}]))
        expect = "has no reference"
    elif case == "empty_quality":
        args["--quality_data"] = str(_quality(tmp_path, []))
        expect = "no records"
    elif case == "empty_safety":
        (tmp_path / "s.jsonl").write_text("\n", encoding="utf-8")
        args["--safety_data"] = str(tmp_path / "s.jsonl")
        expect = "no records"
    elif case == "missing_model":
        args["--model_b"] = str(tmp_path / "nope.gguf")
        expect = "model file not found"
    elif case == "not_gguf":
        (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04 not a model")
        args["--model_a"] = str(tmp_path / "junk.gguf")
        expect = "not a GGUF file"
    elif case == "truncated_gguf":
        with smollm2.open("rb") as f:
            (tmp_path / "cut.gguf").write_bytes(f.read(1 << 20))
        args["--model_a"] = str(tmp_path / "cut.gguf")
        expect = "could not load the model"
    elif case == "bad_calibration":
        (tmp_path / "cal.json").write_text(json.dumps({"temperature": 1.2, "tau_deny": "high"}), encoding="utf-8")
        args["--calibration_a"] = str(tmp_path / "cal.json")
        expect = "'tau_deny' is 'high'"
    elif case == "prompt_too_long":
        args.update({"--n_ctx": "64", "--max_new_tokens": "60"})
        expect = "> n_ctx=64"
    else:
        (tmp_path / "s.jsonl").write_text(json.dumps({"text": "Fold a paper crane.", "label": "ALLOW"}) + "\n",
                                          encoding="utf-8")
        args["--safety_data"] = str(tmp_path / "s.jsonl")
        expect = "need ALLOW and ESCALATE/DENY"
    argv = ["ab"] + [x for k, v in args.items() for x in ((k,) if v is None else (k, v))]
    rc, _, err = _run_cli(argv, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("so8t: error:")]
    assert len(lines) == 1 and expect in lines[0], err
    assert not out.exists()


def test_all_input_problems_in_one_line(tmp_path, capsys):
    out = tmp_path / "report"
    q = _quality(tmp_path, [{"instruction": "x"}])
    rc, _, err = _run_cli(["ab", "--model_a", str(tmp_path / "a.gguf"), "--model_b", str(tmp_path / "b.gguf"),
                           "--quality_data", str(q), "--output_dir", str(out)], capsys)
    line = next(ln for ln in err.splitlines() if ln.startswith("so8t: error:"))
    assert rc == 2 and "a.gguf" in line and "b.gguf" in line and "field 'output'" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- real runs
def _check_throughput_ratio(r) -> None:
    """The ratio is A's generation tokens/s over B's, inside its own interval (no wall-clock bound:
    the speed of a shared machine is not the code's property)."""
    pa, pb, ratio = r.performance.a, r.performance.b, r.performance.throughput_ratio
    assert pa.gen_tokens_per_s > 0 and pb.gen_tokens_per_s > 0
    assert ratio.estimate == pytest.approx(pa.gen_tokens_per_s / pb.gen_tokens_per_s, rel=1e-9)
    assert ratio.low <= ratio.estimate <= ratio.high


def test_model_against_itself_shows_no_difference(smollm2):
    from so8t.ab.runner import ABConfig, run_ab

    cfg = ABConfig(model_a=str(smollm2), model_b=str(smollm2), limit=6, max_new_tokens=8, n_bootstrap=300)
    t0 = time.monotonic()
    r = run_ab(cfg, progress=False)
    assert all(it.output_a == it.output_b for it in r.items)
    for g in [r.quality.overall, *r.quality.by_lang.values()]:
        for iv in (g.bleu_diff, g.rouge_l_diff):
            assert iv.low <= 0.0 <= iv.high and not iv.significant
    for iv in (r.safety.far_diff, r.safety.fdr_diff, r.safety.macro_f1_diff, r.safety.accuracy_diff):
        assert iv.low <= 0.0 <= iv.high and not iv.significant
    assert r.safety.mcnemar.p_value == 1.0 and r.safety.mcnemar.a_only == r.safety.mcnemar.b_only == 0
    _check_throughput_ratio(r)
    p = r.performance.a
    assert p.n_requests == 6 and p.gen_tokens_per_s > 0 and p.prompt_tokens_per_s > 0
    assert 0 < p.ttft_p50_s <= p.ttft_p95_s and p.ttft_p50_s <= p.latency_p50_s <= p.latency_p95_s
    assert p.file_size_bytes == smollm2.stat().st_size
    assert p.peak_rss_delta_bytes is not None and p.peak_rss_delta_bytes > 20 * 2**20  # weights touched
    checks = {c.name: c.passed for c in r.verdict.checks}
    assert all(checks[k] for k in ("bleu", "rouge_l", "false_allow_rate", "false_deny_rate", "macro_f1"))
    md = r.to_markdown()
    assert "Outputs are identical." in md and "## Safety" in md
    print(f"self-comparison: {time.monotonic() - t0:.1f} s, throughput ratio {r.performance.throughput_ratio.text()}")


def test_tiny_random_model_against_itself_shows_no_difference(tiny_llama, tmp_path_factory):
    """The same self-comparison on a tiny Llama built from a config (random weights) and converted here."""
    from so8t.ab.runner import ABConfig, run_ab
    from so8t.export.gguf import convert_to_gguf

    gguf = convert_to_gguf(tiny_llama, tmp_path_factory.mktemp("tiny_ab"), ["Q8_0"], name="tinyab", fidelity=False).path("Q8_0")
    r = run_ab(ABConfig(model_a=str(gguf), model_b=str(gguf), limit=6, max_new_tokens=8, n_bootstrap=200, skip_memory=True),
               progress=False)
    assert all(it.output_a == it.output_b for it in r.items)
    for iv in (r.quality.overall.bleu_diff, r.quality.overall.rouge_l_diff, r.safety.far_diff, r.safety.fdr_diff,
               r.safety.macro_f1_diff):
        assert iv.low <= 0.0 <= iv.high and not iv.significant
    assert r.safety.mcnemar.p_value == 1.0
    _check_throughput_ratio(r)


def test_cli_writes_reports_whose_scores_match_the_libraries(smollm2, smollm2_q8, tmp_path, capsys):
    from so8t.ab.runner import read_ab_report

    out = tmp_path / "ab"
    cal = tmp_path / "calibration_results.json"  # as so8t calibrate writes it: more keys than these three
    cal.write_text(json.dumps({"temperature": 1.5, "tau_deny": 0.4, "tau_escalate": 0.5, "passed": True,
                               "scoring": {"mode": "first-token"}}), encoding="utf-8")
    rc, stdout, err = _run_cli(["ab", "--model_a", str(smollm2_q8), "--model_b", str(smollm2), "--limit", "6",
                                "--calibration_a", str(cal),
                                "--max_new_tokens", "12", "--n_bootstrap", "200", "--n_side_by_side", "2",
                                "--skip_memory", "--output_dir", str(out)], capsys)
    assert rc == 0, err
    assert "verdict:" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["ab_report.json", "ab_report.md"]
    r = read_ab_report(out / "ab_report.json")
    assert r.model_a.size_bytes > r.model_b.size_bytes
    for lang, tok in (("en", "13a"), ("ja", "char")):
        items = [it for it in r.items if it.lang == lang]
        hyp_a, refs = [it.output_a for it in items], [it.reference for it in items]
        assert r.quality.by_lang[lang].bleu_a == pytest.approx(
            sacrebleu.BLEU(tokenize=tok).corpus_score(hyp_a, [refs]).score, abs=1e-9)
        scorer = RougeScorer(["rougeL"], tokenizer=CharTokenizer() if lang == "ja" else None)
        direct = sum(scorer.score(ref, h)["rougeL"].fmeasure for h, ref in zip(hyp_a, refs)) / len(items)
        assert r.quality.by_lang[lang].rouge_l_a == pytest.approx(direct)
    md = (out / "ab_report.md").read_text(encoding="utf-8")
    assert md == r.to_markdown() and md.count("### ") == 2
    assert md.splitlines()[0] == f"# A/B evaluation: {smollm2_q8.name} (A) vs {smollm2.name} (B)"
    differing = sum(it.output_a != it.output_b for it in r.items[:2])  # each shown pair that differs gets a diff
    assert md.count(f"--- A/{smollm2_q8.name}\n+++ B/{smollm2.name}") == differing
    assert md.count("Outputs are identical.") == 2 - differing
    assert r.performance.a.peak_rss_delta_bytes is None  # --skip_memory
    assert r.model_a.calibration["temperature"] == 1.5 and r.safety.a.decision_rule.startswith("calibrated")
    assert r.model_b.calibration is None and r.safety.b.decision_rule.startswith("argmax")
