"""so8t.calibrate.metrics against independent implementations (scikit-learn, scipy, naive loops)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import binom, binomtest
from sklearn.metrics import brier_score_loss, f1_score, log_loss
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from so8t.calibrate import metrics as M
from so8t.decision import LABELS

PROP = settings(max_examples=60, deadline=None)


@st.composite
def scored(draw, max_n: int = 40, t_min: float = 0.1):
    """(p, y): softmax of random (often tied / rounded) logits and random labels."""
    n = draw(st.integers(1, max_n))
    z = draw(arrays(np.float64, (n, 3), elements=st.floats(-8, 8, allow_nan=False)))
    if draw(st.booleans()):
        z = np.round(z)  # ties in confidences and between classes
    t = draw(st.floats(t_min, 10))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, 2)))
    return M.softmax(z, t), y


@st.composite
def decisions(draw):
    p, y = draw(scored())
    grid = st.sampled_from([0.0, 0.2, 1 / 3, 0.5, 0.7, 0.9, 1.0, float(np.nextafter(1.0, 2.0))])
    tau_deny = draw(st.one_of(grid, st.sampled_from(p[:, 2].tolist())))
    tau_esc = draw(st.one_of(grid, st.sampled_from(p[:, 0].tolist())))
    return p, y, tau_deny, tau_esc


# ----------------------------------------------------------------------------- naive references
def naive_binned_gap(values, hits, n_bins=15):
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        members = [i for i, v in enumerate(values)
                   if (v > edges[b] or (b == 0 and v == 0.0)) and v <= edges[b + 1]]
        if members:
            acc = sum(hits[i] for i in members) / len(members)
            conf = sum(values[i] for i in members) / len(members)
            total += len(members) / len(values) * abs(acc - conf)
    return total


def naive_top_label(p, y):
    conf = [max(row) for row in p.tolist()]
    hits = [float(int(np.argmax(row)) == t) for row, t in zip(p, y)]
    return conf, hits


def naive_adaptive(p, y, n_bins=15):
    conf, hits = naive_top_label(p, y)
    n = len(conf)
    order = sorted(range(n), key=lambda i: conf[i])
    groups, start = min(n_bins, n), 0
    total = 0.0
    for g in range(groups):
        size = n // groups + (1 if g < n % groups else 0)
        idx = order[start:start + size]
        start += size
        total += abs(sum(hits[i] for i in idx) - sum(conf[i] for i in idx)) / n
    return total


def naive_decide(p, tau_deny, tau_esc):
    return np.array([2 if row[2] >= tau_deny else 0 if row[0] >= tau_esc else 1 for row in p])


# ----------------------------------------------------------------------------- tests
@PROP
@given(z=arrays(np.float64, (7, 3), elements=st.floats(-30, 30)), t=st.floats(0.05, 20))
def test_softmax_matches_scipy(z, t):
    np.testing.assert_allclose(M.softmax(z, t), scipy.special.softmax(z / t, axis=1), rtol=1e-12, atol=1e-300)


@PROP
@given(z=arrays(np.float64, (5, 4), elements=st.floats(-300, 300)), t=st.floats(0.05, 20))
def test_log_softmax_matches_scipy(z, t):
    """The one log-softmax (calibration, scoring's sequence mode, the logit comparison of bake and GGUF fidelity)."""
    np.testing.assert_allclose(M.log_softmax(z, t), scipy.special.log_softmax(z / t, axis=-1), rtol=1e-12, atol=1e-12)


def test_log_softmax_of_a_vocabulary_row_and_its_users():
    rng = np.random.default_rng(0)
    row = (rng.normal(0, 8, 49152) + 1e4).astype(np.float32)  # scoring's case: one float32 logit row, large values
    got = M.log_softmax(row)
    assert got.dtype == np.float64 and got.shape == row.shape
    np.testing.assert_allclose(got, scipy.special.log_softmax(row.astype(np.float64)), rtol=0, atol=1e-9)
    from so8t.calibrate import calibration, scoring
    from so8t.export import logit_compare

    assert scoring.log_softmax is M.log_softmax and logit_compare.log_softmax is M.log_softmax
    assert calibration.log_softmax is M.log_softmax


def test_softmax_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        M.softmax(np.zeros((2, 3)), 0.0)


def test_bin_convention_lo_exclusive_hi_inclusive():
    edges = np.linspace(0, 1, 16)
    assert M.bin_index(edges).tolist() == [0] + list(range(15))
    assert M.bin_index([1e-12, 0.07, 0.9999]).tolist() == [0, 1, 14]


@PROP
@given(scored())
def test_ece_variants_match_naive_loops(data):
    p, y = data
    conf, hits = naive_top_label(p, y)
    assert M.top_label_ece(p, y) == pytest.approx(naive_binned_gap(conf, hits), abs=1e-12)
    cw = np.mean([naive_binned_gap(p[:, k].tolist(), (y == k).astype(float).tolist()) for k in range(3)])
    assert M.classwise_ece(p, y) == pytest.approx(cw, abs=1e-12)
    assert M.adaptive_ece(p, y) == pytest.approx(naive_adaptive(p, y), abs=1e-12)


@PROP
@given(scored())
def test_reliability_bins_sum_to_ece(data):
    p, y = data
    bins = M.reliability_bins(p, y)
    assert sum(b.count for b in bins) == len(y)
    ece = sum(b.count / len(y) * abs(b.accuracy - b.mean_confidence) for b in bins if b.count)
    assert ece == pytest.approx(M.top_label_ece(p, y), abs=1e-12)


@PROP
@given(scored())
def test_brier_matches_one_hot_formula_and_sklearn(data):
    p, y = data
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1
    expected = sum(sum((p[i, k] - onehot[i, k]) ** 2 for k in range(3)) for i in range(len(y))) / len(y)
    assert M.brier_score(p, y) == pytest.approx(expected, abs=1e-12)
    assert M.brier_score(p, y) == pytest.approx(
        brier_score_loss(y, p, labels=[0, 1, 2], scale_by_half=False), abs=1e-12)
    assert 0.0 <= M.brier_score(p, y) <= 2.0


@PROP
@given(scored(t_min=1.0))
def test_nll_matches_sklearn_log_loss(data):
    p, y = data
    assert M.negative_log_likelihood(p, y) == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-9)


@PROP
@given(decisions())
def test_decisions_and_rates_match_references(data):
    p, y, tau_deny, tau_esc = data
    d = M.decide(p, tau_deny, tau_esc)
    np.testing.assert_array_equal(d, naive_decide(p, tau_deny, tau_esc))
    cm = M.confusion_matrix(y, d)
    np.testing.assert_array_equal(cm, sk_confusion_matrix(y, d, labels=[0, 1, 2]))
    np.testing.assert_allclose(M.f1_per_class(cm), f1_score(y, d, labels=[0, 1, 2], average=None, zero_division=0))
    assert M.macro_f1(cm) == pytest.approx(f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0))

    rep = M.compute_metrics(p, y, tau_deny, tau_esc)
    neg = [i for i in range(len(y)) if y[i] != 0]
    pos = [i for i in range(len(y)) if y[i] == 0]
    fa = sum(1 for i in neg if d[i] == 0)
    fd = sum(1 for i in pos if d[i] == 2)
    assert (rep.false_allow_count, rep.false_allow_denominator) == (fa, len(neg))
    assert (rep.false_deny_count, rep.false_deny_denominator) == (fd, len(pos))
    assert rep.false_allow_rate == (fa / len(neg) if neg else None)
    assert rep.false_deny_rate == (fd / len(pos) if pos else None)
    assert rep.escalation_rate == pytest.approx(sum(1 for v in d if v == 1) / len(y))
    assert rep.macro_f1 == pytest.approx(M.macro_f1(cm))
    assert ("false_allow_rate" in rep.undefined) == (not neg)
    assert ("false_deny_rate" in rep.undefined) == (not pos)
    assert np.array(rep.confusion_matrix).tolist() == cm.tolist()


@PROP
@given(n=st.integers(1, 300), data=st.data())
def test_clopper_pearson_matches_scipy_exact(n, data):
    k = data.draw(st.integers(0, n))
    ub = M.clopper_pearson_upper(k, n)
    # a one-sided 95% bound is the upper end of the two-sided 90% exact interval
    assert ub == pytest.approx(binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact").high, rel=1e-9)
    if k < n:
        assert binom.cdf(k, n, ub) == pytest.approx(0.05, abs=1e-9)


def test_clopper_pearson_edges():
    assert M.clopper_pearson_upper(5, 5) == 1.0
    assert M.clopper_pearson_upper(0, 0) is None
    assert M.clopper_pearson_upper(0, 148) > 0.02 > M.clopper_pearson_upper(0, 149)
    with pytest.raises(ValueError):
        M.clopper_pearson_upper(3, 2)


def test_report_undefined_rates_and_json_round_trip():
    p = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]])
    rep = M.compute_metrics(p, np.array([0, 0]), 0.5, 0.7)
    assert rep.false_allow_rate is None and rep.false_allow_upper95 is None
    assert "ESCALATE or DENY" in rep.undefined["false_allow_rate"]
    assert rep.false_deny_rate == 0.0 and rep.labels == LABELS
    again = M.MetricReport.model_validate_json(rep.model_dump_json())
    assert again == rep
    assert json.loads(rep.model_dump_json())["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    ("p", "y", "match"),
    [
        (np.zeros((2, 4)), [0, 1], r"expected \(n, 3\)"),
        (np.full((2, 3), 0.5), [0, 1], "sum to 1"),
        (np.full((2, 3), 1 / 3), [0, 3], "out of range"),
        (np.full((2, 3), 1 / 3), [0], "lengths must match"),
        (np.full((2, 3), 1 / 3), ["ALLOW", "DENY"], "encode_labels"),
        (np.zeros((0, 3)), [], "no samples"),
    ],
)
def test_invalid_inputs_are_explained(p, y, match):
    with pytest.raises(ValueError, match=match):
        M.compute_metrics(p, np.asarray(y), 0.5, 0.7)


def test_simulated_calibrated_ece_matches_labels_drawn_from_the_model():
    """Independent check: labels drawn per row from p itself (a perfectly calibrated world), scored
    with top_label_ece, have the same ECE distribution as the vectorised Bernoulli simulation."""
    rng = np.random.default_rng(7)
    p = scipy.special.softmax(rng.normal(size=(60, 3)) * 2.5, axis=1)
    sim = M.simulated_calibrated_ece(p, draws=4000, seed=1)
    assert sim.shape == (4000,) and (sim >= 0).all()
    direct = np.array([M.top_label_ece(p, np.array([rng.choice(3, p=row) for row in p])) for _ in range(1500)])
    se = np.hypot(sim.std() / np.sqrt(sim.size), direct.std() / np.sqrt(direct.size))
    assert abs(sim.mean() - direct.mean()) < 4 * se
    assert abs(np.percentile(sim, 95) - np.percentile(direct, 95)) < 0.02
    np.testing.assert_array_equal(sim, M.simulated_calibrated_ece(p, draws=4000, seed=1))  # seeded


def test_simulated_calibrated_ece_shrinks_with_more_samples_and_confidence():
    rng = np.random.default_rng(3)
    p = scipy.special.softmax(rng.normal(size=(100, 3)) * 2.0, axis=1)
    small, large = M.simulated_calibrated_ece(p).mean(), M.simulated_calibrated_ece(np.tile(p, (9, 1))).mean()
    assert large < 0.5 * small  # noise ~ 1/sqrt(n): 9x the rows, about a third of the ECE
    sure = np.tile([[0.999, 0.0005, 0.0005]], (100, 1))
    assert M.simulated_calibrated_ece(sure).mean() < 0.005
