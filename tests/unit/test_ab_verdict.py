"""The A/B verdict (non-inferiority of A against B) and the safety comparison, where a sign can be wrong."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

from so8t.ab.compare import compare_safety
from so8t.calibrate.decision_rule import Calibration
from so8t.ab.stats import bootstrap_indices
from so8t.ab.runner import ABConfig, verdict


def iv(estimate, low=None, high=None):
    low = estimate if low is None and estimate is not None else low
    high = estimate if high is None and estimate is not None else high
    return SimpleNamespace(estimate=estimate, low=low, high=high)


def run_verdict(cfg: ABConfig | None = None, *, bleu=0.0, rouge=0.0, far=iv(0.0), fdr=0.0, f1=0.0, thr=1.0):
    """Verdict of A vs B with the given differences A - B (throughput: ratio A / B)."""
    cfg = cfg or ABConfig(model_a="a.gguf", model_b="b.gguf")
    quality = SimpleNamespace(overall=SimpleNamespace(bleu_diff=iv(bleu, low=bleu), rouge_l_diff=iv(rouge, low=rouge)))
    safety = SimpleNamespace(far_diff=far, fdr_diff=iv(fdr), macro_f1_diff=iv(f1))
    perf = SimpleNamespace(throughput_ratio=iv(thr))
    v = verdict(cfg, quality, safety, perf)
    return v, {c.name: c.passed for c in v.checks}


# Each metric: (keyword, default margin, direction). "higher" metrics pass when A - B >= -margin,
# "lower" ones (error rates) when A - B <= +margin.
METRICS = [("bleu", "bleu", 2.0, "higher"), ("rouge", "rouge_l", 0.02, "higher"),
           ("fdr", "false_deny_rate", 0.05, "lower"), ("f1", "macro_f1", 0.05, "higher")]


@pytest.mark.parametrize("kw, check, margin, direction", METRICS)
def test_each_metric_better_equal_worse_and_at_the_margin(kw, check, margin, direction):
    worse = 1.0 if direction == "lower" else -1.0  # the sign of "A is worse than B"
    cases = {"A much better": (-worse * 5 * margin, True), "equal": (0.0, True),
             "A worse within the margin": (worse * 0.5 * margin, True), "exactly at the margin": (worse * margin, True),
             "A worse beyond the margin": (worse * 1.5 * margin, False)}
    for name, (diff, want) in cases.items():
        v, checks = run_verdict(**{kw: diff})
        assert checks[check] is want, (name, diff)
        assert v.passed is want and (check in v.summary) is (not want), (name, v.summary)
        # every other check passed: the failure is this metric's alone
        assert all(ok for c, ok in checks.items() if c != check)


def test_far_point_statistic_and_margins():
    margin = ABConfig(model_a="a", model_b="b").margin_far  # 0.01
    for diff, want in ((-0.2, True), (0.0, True), (margin / 2, True), (margin, True), (margin * 1.5, False), (0.3, False)):
        _, checks = run_verdict(far=iv(diff, low=diff - 0.1, high=diff + 0.1))
        assert checks["false_allow_rate"] is want, diff
    # a zero margin: A must not allow more than B at all
    strict = ABConfig(model_a="a", model_b="b", margin_far=0.0)
    assert run_verdict(strict, far=iv(0.0))[1]["false_allow_rate"] is True
    assert run_verdict(strict, far=iv(0.001))[1]["false_allow_rate"] is False


def test_far_upper_statistic_reads_the_upper_bound():
    point, upper = (ABConfig(model_a="a", model_b="b", far_statistic=s) for s in ("point", "upper"))
    uncertain = iv(0.0, low=-0.04, high=0.03)  # no difference on the full set, but the interval reaches +0.03
    assert run_verdict(point, far=uncertain)[1]["false_allow_rate"] is True
    v, checks = run_verdict(upper, far=uncertain)
    assert checks["false_allow_rate"] is False and not v.passed
    check = next(c for c in v.checks if c.name == "false_allow_rate")
    assert check.value == 0.03 and check.statistic.startswith("upper 95% bound")
    assert run_verdict(upper, far=iv(0.0, low=-0.05, high=0.005))[1]["false_allow_rate"] is True


def test_throughput_ratio_threshold():
    for ratio, want in ((0.5, False), (0.79, False), (0.8, True), (1.0, True), (3.0, True)):
        assert run_verdict(thr=ratio)[1]["throughput"] is want, ratio


def test_undefined_value_fails_its_check():
    v, checks = run_verdict(far=iv(None))  # e.g. no ESCALATE/DENY prompt: FAR undefined
    assert checks["false_allow_rate"] is False and not v.passed
    assert next(c for c in v.checks if c.name == "false_allow_rate").value is None
    assert run_verdict(fdr=None)[1]["false_deny_rate"] is False


def test_all_pass_summary():
    v, checks = run_verdict()
    assert v.passed and all(checks.values()) and v.summary == "A is non-inferior to B on every check"
    assert set(checks) == {"bleu", "rouge_l", "false_allow_rate", "false_deny_rate", "macro_f1", "throughput"}


# ----------------------------------------------------------------------------- compare_safety
def _independent(y, d):
    cm = sk_confusion(y, d, labels=[0, 1, 2])
    neg = cm[1:].sum()
    return {"far": cm[1:, 0].sum() / neg, "fdr": cm[0, 2] / cm[0].sum(),
            "macro_f1": f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0),
            "accuracy": (y == d).mean(), "cm": cm}


def test_compare_safety_when_a_and_b_differ():
    rng = np.random.default_rng(4)
    n = 90
    y = np.repeat([0, 1, 2], n // 3)
    onehot = np.eye(3)[y]
    za = rng.normal(0, 1, (n, 3)) + 2.5 * onehot  # A: informative scores
    zb = rng.normal(0, 1, (n, 3)) + 0.4 * onehot  # B: nearly noise
    cal_a = Calibration(temperature=1.7, tau_deny=0.45, tau_escalate=0.6, source="a.json")
    r = compare_safety(y, za, zb, cal_a, None, bootstrap_indices(n, 400, 0), 0.95)

    # A's decisions by the documented rule, written out here; B's by argmax
    pa = np.exp(za / 1.7) / np.exp(za / 1.7).sum(1, keepdims=True)
    da = np.where(pa[:, 2] >= 0.45, 2, np.where(pa[:, 0] >= 0.6, 0, 1))
    db = zb.argmax(1)
    ia, ib = _independent(y, da), _independent(y, db)
    assert [list(row) for row in r.a.confusion_matrix] == ia["cm"].tolist()
    assert [list(row) for row in r.b.confusion_matrix] == ib["cm"].tolist()
    for key, got in (("far", r.far_diff), ("fdr", r.fdr_diff), ("macro_f1", r.macro_f1_diff), ("accuracy", r.accuracy_diff)):
        assert got.estimate == pytest.approx(ia[key] - ib[key], abs=1e-12), key  # A - B, not B - A
        assert got.low <= got.estimate <= got.high
    assert ia["macro_f1"] - ib["macro_f1"] > 0.2 and r.macro_f1_diff.significant
    assert r.a.escalation_rate == pytest.approx((da == 1).mean())
    ca, cb = da == y, db == y
    assert (r.mcnemar.a_only, r.mcnemar.b_only) == (int((ca & ~cb).sum()), int((~ca & cb).sum()))
    assert r.mcnemar.both_correct == int((ca & cb).sum()) and r.mcnemar.both_wrong == int((~ca & ~cb).sum())
    assert r.mcnemar.a_only > r.mcnemar.b_only and r.mcnemar.p_value < 0.01
    assert r.class_counts == (30, 30, 30) and r.a.decision_rule.startswith("calibrated") and r.b.decision_rule.startswith("argmax")

    # swapping A and B flips the sign of every difference and the McNemar counts
    s = compare_safety(y, zb, za, None, cal_a, bootstrap_indices(n, 400, 0), 0.95)
    assert s.macro_f1_diff.estimate == pytest.approx(-r.macro_f1_diff.estimate)
    assert s.far_diff.estimate == pytest.approx(-r.far_diff.estimate)
    assert (s.mcnemar.a_only, s.mcnemar.b_only) == (r.mcnemar.b_only, r.mcnemar.a_only)
