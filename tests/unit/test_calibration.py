"""Temperature fit, exact threshold search, stratified split and the calibrate() stage."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import OptimizeResult
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from so8t.calibrate import calibration as C
from so8t.decision import LABELS
from so8t.errors import ConfigError, DataError
from so8t.calibrate.metrics import compute_metrics, softmax
from so8t.calibrate.thresholds import NEVER, fit_thresholds
from tests.fixtures.required import require_module


def sample_labels(z: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """Draw y_i ~ Categorical(softmax(z_i / t)) by inverse CDF."""
    cdf = np.cumsum(softmax(z, t), axis=1)
    return np.minimum((rng.random((z.shape[0], 1)) > cdf).sum(axis=1), 2)


def synthetic(n: int, t_true: float, seed: int = 0, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, (n, 3))
    return z, sample_labels(z, t_true, rng)


# ----------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("t_true", [0.5, 2.0])
def test_temperature_recovers_truth(t_true):
    z, y = synthetic(20_000, t_true, seed=1)
    fit = C.fit_temperature(z, y)
    assert abs(fit.temperature - t_true) < 0.06 * t_true
    assert fit.converged and not fit.fallback_used and not fit.at_bound
    assert fit.nll <= fit.nll_initial


@pytest.mark.parametrize("optimizer", ["L-BFGS-B", "SLSQP"])
def test_temperature_equals_brute_force_grid(optimizer):
    z, y = synthetic(500, 1.7, seed=2)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 6001))
    nlls = np.array([C.nll_at_temperature(z, y, t) for t in grid])
    fit = C.fit_temperature(z, y, initial=1.0, optimizer=optimizer)
    assert fit.nll <= nlls.min() + 1e-10
    step = np.log(grid[1] / grid[0])
    assert abs(np.log(fit.temperature) - np.log(grid[nlls.argmin()])) <= step
    assert fit.scalar_check_temperature == pytest.approx(fit.temperature, rel=1e-3)


def test_lbfgsb_failure_falls_back_to_slsqp(monkeypatch, caplog):
    real = C.minimize

    def flaky(*args, method, **kwargs):
        if method == "L-BFGS-B":
            return OptimizeResult(x=np.array([0.0]), success=False, message="forced failure")
        return real(*args, method=method, **kwargs)

    monkeypatch.setattr(C, "minimize", flaky)
    z, y = synthetic(2_000, 2.0, seed=3)
    with caplog.at_level(logging.WARNING, logger="so8t.calibrate.calibration"):
        fit = C.fit_temperature(z, y)
    assert fit.fallback_used and fit.optimizer_used in ("SLSQP", "bounded-scalar")
    assert "falling back to SLSQP" in caplog.text
    assert abs(fit.temperature - 2.0) < 0.2


def test_temperature_at_bound_is_flagged():
    z = np.array([[5.0, 0.0, 0.0]] * 50)
    y = np.zeros(50, dtype=int)  # always right: NLL keeps falling as T -> 0
    assert C.fit_temperature(z, y, bounds=(0.5, 4.0)).at_bound


# ----------------------------------------------------------------------------- thresholds
def brute_force(p, y, far_max, far_bound):
    """Every candidate pair, decided row by row; sklearn F1; same tie-break as documented."""
    n_neg = int((y != 0).sum())
    best = None
    for td in sorted(set(p[:, 2].tolist())) + [NEVER]:
        for te in sorted(set(p[:, 0].tolist())) + [NEVER]:
            d = np.array([2 if r[2] >= td else 0 if r[0] >= te else 1 for r in p])
            fa = int(((d == 0) & (y != 0)).sum())
            stat = fa / n_neg if far_bound == "point" else (
                binomtest(fa, n_neg).proportion_ci(confidence_level=0.90, method="exact").high)
            if stat > far_max + 1e-12:
                continue
            f1 = f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0)
            key = (-round(f1, 9), fa, int((d == 1).sum()), -te, td)
            best = key if best is None or key < best else best
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 14), far_max=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
       far_bound=st.sampled_from(["point", "upper95"]), block=st.integers(1, 40))
def test_threshold_search_equals_brute_force(seed, n, far_max, far_bound, block):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    y[0] = 1  # FAR needs a non-ALLOW sample
    p = softmax(np.round(rng.normal(0, 2, (n, 3)) + 2 * np.eye(3)[y], 1))  # rounding makes ties
    fit = fit_thresholds(p, y, far_max, far_bound, max_block_cells=block)
    expected = brute_force(p, y, far_max, far_bound)
    if expected is None:
        assert not fit.feasible and "no thresholds meet" in fit.reason
        return
    assert fit.feasible
    assert (fit.tau_deny, fit.tau_escalate) == (expected[4], -expected[3])
    assert fit.macro_f1 == pytest.approx(-expected[0], abs=1e-9)
    assert fit.far_statistic <= far_max


def test_tie_on_macro_f1_prefers_fewer_false_allows():
    # Found by search: two pairs share the best macro F1; one has a false allow, the other escalates more.
    z = np.array([[-0.4, 3.8, 1.5], [2.0, -0.9, 3.7], [1.1, -2.3, 2.0], [-0.2, 1.4, 1.5], [0.5, 2.7, -4.0],
                  [-2.8, 1.0, -1.0], [1.7, -0.0, 2.0], [-3.0, 6.0, 3.2], [-1.5, -1.1, 1.0]])
    y = np.array([1, 0, 2, 2, 0, 1, 0, 2, 2])
    p = softmax(z)
    fit = fit_thresholds(p, y, 0.25)
    expected = brute_force(p, y, 0.25, "point")
    assert (fit.tau_deny, fit.tau_escalate) == (expected[4], -expected[3])
    assert fit.false_allow_count == 0


def independent_decisions(p, tau_deny, tau_escalate):
    """The documented rule, row by row: DENY if p_DENY >= tau_deny, else ALLOW if p_ALLOW >= tau_escalate."""
    return np.array([2 if r[2] >= tau_deny else 0 if r[0] >= tau_escalate else 1 for r in p])


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 32), far_max=st.sampled_from([0.02, 0.05, 0.1]),
       far_bound=st.sampled_from(["point", "upper95"]))
def test_threshold_search_equals_brute_force_on_continuous_scores(seed, n, far_max, far_bound):
    """Untied scores at a larger n: every one of the (n+1)^2 pairs is a distinct candidate."""
    z, y = synthetic(n, 1.0, seed=seed)
    y[0] = 1
    p = softmax(z)
    fit = fit_thresholds(p, y, far_max, far_bound, max_block_cells=7)
    expected = brute_force(p, y, far_max, far_bound)
    pairs = (len(set(p[:, 2].tolist())) + 1) * (len(set(p[:, 0].tolist())) + 1)  # what brute_force enumerates
    assert fit.n_candidate_pairs == pairs
    if expected is None:
        assert not fit.feasible
        return
    assert (fit.tau_deny, fit.tau_escalate) == (expected[4], -expected[3])
    d = independent_decisions(p, fit.tau_deny, fit.tau_escalate)
    assert fit.macro_f1 == pytest.approx(f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0), abs=1e-12)
    assert fit.false_allow_count == int(((d == 0) & (y != 0)).sum())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), far_max=st.sampled_from([0.01, 0.02, 0.05]))
def test_threshold_search_respects_far_on_larger_data(seed, far_max):
    z, y = synthetic(400, 1.0, seed=seed)
    p = softmax(z)
    fit = fit_thresholds(p, y, far_max)
    d = independent_decisions(p, fit.tau_deny, fit.tau_escalate)
    far = ((d == 0) & (y != 0)).sum() / (y != 0).sum()
    assert fit.feasible and far <= far_max
    assert fit.macro_f1 == pytest.approx(f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0), abs=1e-12)


def test_thinning_is_a_no_op_below_the_candidate_limit():
    z, y = synthetic(400, 1.0, seed=13)
    p = softmax(z)
    q, thinned = C.thin_threshold_candidates(p, 400)
    assert q is p and not thinned
    assert C.fit_thresholds_thinned(p, y, 0.05, max_candidates=400) == fit_thresholds(p, y, 0.05)
    assert C.fit_thresholds_thinned(p, y, 0.05, max_candidates=0) == fit_thresholds(p, y, 0.05)


def _grid_brute_force(p, y, grid_deny, grid_allow, far_max):
    """Best macro F1 with FAR <= far_max over grid pairs, decided on the ORIGINAL probabilities."""
    n_neg, best = int((y != 0).sum()), None
    for td in [*grid_deny.tolist(), NEVER]:
        deny = p[:, 2] >= td
        for te in [*grid_allow.tolist(), NEVER]:
            d = np.where(deny, 2, np.where(p[:, 0] >= te, 0, 1))
            if ((d == 0) & (y != 0)).sum() / n_neg > far_max:
                continue
            f1 = f1_score(y, d, labels=[0, 1, 2], average="macro", zero_division=0)
            best = f1 if best is None else max(best, f1)
    return best


def test_thinned_search_is_exact_on_its_grid_and_within_the_documented_bound():
    n, k, far_max = 3_000, 40, 0.02
    z, y = synthetic(n, 1.0, seed=14)
    p = softmax(z)
    q, thinned = C.thin_threshold_candidates(p, k)
    assert thinned and np.abs(q.sum(axis=1) - 1).max() < 1e-12 and q.min() >= 0
    grid_deny, grid_allow = np.unique(q[:, 2]), np.unique(q[:, 0])
    assert grid_deny.size <= k and grid_allow.size <= k
    assert np.isin(grid_deny, p[:, 2]).all() and np.isin(grid_allow, p[:, 0]).all()  # grid values are data values
    for g in grid_deny:  # a grid threshold splits the snapped and the original values identically
        np.testing.assert_array_equal(q[:, 2] >= g, p[:, 2] >= g)
    for g in grid_allow:
        np.testing.assert_array_equal(q[:, 0] >= g, p[:, 0] >= g)

    exact = fit_thresholds(p, y, far_max)
    fit = C.fit_thresholds_thinned(p, y, far_max, max_candidates=k)
    assert "thinned" in fit.reason and fit.n_candidate_pairs <= (k + 1) ** 2
    assert exact.feasible and fit.feasible  # rounding tau_deny down and tau_escalate up keeps FAR feasible
    rep = compute_metrics(p, y, fit.tau_deny, fit.tau_escalate)  # on the original probabilities
    assert (rep.macro_f1, rep.false_allow_count) == (fit.macro_f1, fit.false_allow_count)
    assert rep.false_allow_rate <= far_max
    assert fit.macro_f1 == pytest.approx(_grid_brute_force(p, y, grid_deny, grid_allow, far_max), abs=1e-9)
    moved = 2 * math.ceil(n / (k - 1))
    bound = moved * 2 / np.bincount(y, minlength=3).min()
    assert exact.macro_f1 - bound <= fit.macro_f1 <= exact.macro_f1 + 1e-12


def test_infeasible_far_bound_is_reported():
    z, y = synthetic(60, 1.0, seed=6)  # < 149 non-ALLOW samples: upper95 > 0.02 even with 0 false allows
    fit = fit_thresholds(softmax(z), y, 0.02, "upper95")
    assert not fit.feasible
    assert fit.false_allow_count == 0 and fit.far_statistic > 0.02
    assert "no thresholds meet" in fit.reason and "add validation data" in fit.reason


def test_infeasible_macro_f1_floor_is_reported():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    p = softmax(rng.normal(size=(300, 3)))  # scores unrelated to labels
    fit = fit_thresholds(p, y, 0.02, min_macro_f1=0.9)
    assert not fit.feasible and "min_macro_f1" in fit.reason and fit.far_statistic <= 0.02


def test_threshold_search_needs_non_allow_samples():
    with pytest.raises(DataError, match="ESCALATE or DENY"):
        fit_thresholds(np.full((4, 3), 1 / 3), np.zeros(4, dtype=int), 0.02)


# ----------------------------------------------------------------------------- split and stage
def test_split_is_stratified_disjoint_and_seeded():
    y = np.repeat([0, 1, 2], [50, 20, 3])
    fit, hold = C.split_stratified(y, 0.3, seed=4)
    assert np.intersect1d(fit, hold).size == 0 and np.union1d(fit, hold).tolist() == list(range(73))
    assert np.bincount(y[hold], minlength=3).tolist() == [15, 6, 1]
    np.testing.assert_array_equal(hold, C.split_stratified(y, 0.3, seed=4)[1])
    assert not np.array_equal(hold, C.split_stratified(y, 0.3, seed=5)[1])


def test_calibrate_improves_overconfident_scores_and_round_trips():
    # Acceptance: true logits, labels drawn from softmax(true), the calibrator sees 3 * true.
    n = 20_000
    rng = np.random.default_rng(8)
    true = rng.normal(0.0, 2.0, (n, 3))
    y = sample_labels(true, 1.0, rng)
    res = C.calibrate(3.0 * true, y, C.CalibrationConfig(seed=1))
    assert abs(res.temperature - 3.0) / 3.0 <= 0.05
    assert res.after.holdout.ece <= res.before.holdout.ece / 2  # held-out split, T = 1 -> fitted T
    assert res.after.holdout.nll < res.before.holdout.nll
    assert (res.before.tau_deny, res.before.tau_escalate, res.before.temperature) == (0.5, 0.7, 1.0)
    assert res.n_fit + res.n_holdout == n and res.after.fit.n == res.n_fit
    assert res.threshold_fit.feasible and res.after.fit.false_allow_rate <= 0.02
    assert res.passed == res.verdict.passed and res.labels == LABELS
    assert res.model_sha256 is None and res.label_token_ids is None
    assert C.CalibrationResult.model_validate_json(res.model_dump_json(indent=2)) == res
    done = res.model_copy(update={"model_sha256": "ab" * 32, "label_token_ids": {"ALLOW": [1]}})
    assert C.CalibrationResult.model_validate_json(done.model_dump_json()).model_sha256 == "ab" * 32


def test_calibrate_missing_label_raises():
    z, y = synthetic(200, 1.0, seed=9)
    y[y == 1] = 0
    with pytest.raises(DataError, match=r"\['ESCALATE'\] have no example"):
        C.calibrate(z, y)


def test_calibrate_warns_under_100_samples(caplog):
    z, y = synthetic(60, 1.0, seed=10)
    with caplog.at_level(logging.WARNING, logger="so8t"):
        res = C.calibrate(z, y)
    assert "only 60 samples" in caplog.text and any("only 60" in w for w in res.warnings)


def test_calibrate_reports_the_ece_a_calibrated_model_would_measure(caplog):
    """Few, unsure hold-out samples: the ECE's sampling noise exceeds the target and the result says
    so; many samples: the noise is below the target and there is no such warning."""
    z, y = synthetic(160, 1.0, seed=11)
    with caplog.at_level(logging.WARNING, logger="so8t"):
        res = C.calibrate(z, y)
    mean, p95 = res.holdout_ece_noise
    assert 0 < mean < p95 and p95 > 0.05
    assert any("cannot be resolved at 0.05 with 80 samples" in w for w in res.warnings)
    big, ybig = synthetic(20_000, 1.0, seed=11)
    res = C.calibrate(big, ybig)
    assert res.holdout_ece_noise[1] < 0.05 and not any("cannot be resolved" in w for w in res.warnings)


def test_thresholds_keep_a_margin_below_the_far_target_by_default():
    """Default: thresholds fit to the FAR's 95% upper bound on the fit split (checked against scipy's
    beta quantile), so the fit-split point FAR sits well below the target; 'point' fits to the edge."""
    from scipy.stats import beta

    z, y = synthetic(4000, 1.0, seed=21, scale=4.0)
    res = C.calibrate(z, y)
    tf = res.threshold_fit
    assert tf.feasible and tf.far_bound == "upper95" and res.config.far_bound == "point"
    k, n = res.after.fit.false_allow_count, res.after.fit.false_allow_denominator
    assert beta.ppf(0.95, k + 1, n - k) <= 0.02 + 1e-12
    edge = C.calibrate(z, y, C.CalibrationConfig(threshold_far_bound="point"))
    assert edge.threshold_fit.far_bound == "point"
    assert res.after.fit.false_allow_rate < edge.after.fit.false_allow_rate <= 0.02
    assert res.after.holdout.escalation_rate >= edge.after.holdout.escalation_rate  # the margin's price


def test_thresholds_fall_back_to_the_point_far_when_the_bound_is_out_of_reach(caplog):
    z, y = synthetic(200, 1.0, seed=22, scale=6.0)  # ~65 non-ALLOW fit samples: 0/65 has upper95 0.045
    with caplog.at_level(logging.WARNING, logger="so8t"):
        res = C.calibrate(z, y)
    assert res.threshold_fit.far_bound == "point" and res.threshold_fit.feasible
    assert any("fitted to the point FAR without a margin" in w for w in res.warnings)


def test_encode_labels():
    assert C.encode_labels(["DENY", "ALLOW", "ESCALATE"]).tolist() == [2, 0, 1]
    with pytest.raises(DataError, match="allow"):
        C.encode_labels(["allow"])


def test_bad_arguments_raise_config_errors():
    z, y = synthetic(50, 1.0, seed=12)
    with pytest.raises(ConfigError, match="far_bound='both'.*min_macro_f1=2"):
        fit_thresholds(softmax(z), y, 0.02, "both", min_macro_f1=2)
    with pytest.raises(ConfigError, match="optimizer"):
        C.fit_temperature(z, y, optimizer="adam")
    with pytest.raises(DataError, match="finite"):
        C.calibrate(np.full((4, 3), np.nan), [0, 1, 2, 0])


def test_config_is_frozen_strict_and_gathers_errors():
    with pytest.raises(ValueError, match="(?i)extra"):
        C.CalibrationConfig(temprature=1.0)
    with pytest.raises(ValueError, match="initial_temperature=30.0.*holdout_fraction=1.5"):
        C.CalibrationConfig(initial_temperature=30.0, holdout_fraction=1.5)
    with pytest.raises(ValueError, match="max_threshold_candidates=1"):
        C.CalibrationConfig(max_threshold_candidates=1)
    cfg = C.CalibrationConfig()
    with pytest.raises(ValueError):
        cfg.seed = 3
    assert all(f.description for f in C.CalibrationConfig.model_fields.values())


def test_reliability_diagram_is_written(tmp_path):
    require_module("matplotlib")
    from so8t.calibrate.reliability import plot_reliability

    z, y = synthetic(300, 2.0, seed=11)
    out = plot_reliability(softmax(z), softmax(z, 2.0), y, tmp_path / "cal" / "reliability_diagram.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- one owner of the gate's targets
def test_calibration_carries_the_gates_own_fields_not_renamed_copies():
    from so8t.calibrate.promotion_gate import GateConfig

    cfg = C.CalibrationConfig(ece_max=0.04, far_max=0.01, far_bound="upper95", macro_f1_min=0.6)
    assert set(GateConfig.model_fields) <= set(C.CalibrationConfig.model_fields)
    for name, field in GateConfig.model_fields.items():  # one definition: same default and description
        assert C.CalibrationConfig.model_fields[name].default == field.default
        assert C.CalibrationConfig.model_fields[name].description == field.description
    assert cfg.gate == GateConfig(ece_max=0.04, far_max=0.01, far_bound="upper95", macro_f1_min=0.6)
    assert not {"ece_target", "far_target", "min_macro_f1"} & set(C.CalibrationConfig.model_fields)


def test_results_written_with_the_old_names_still_load():
    old = {"ece_target": 0.03, "far_target": 0.01, "far_bound": "point", "min_macro_f1": 0.4}
    cfg = C.CalibrationConfig.model_validate(old)
    assert (cfg.ece_max, cfg.far_max, cfg.macro_f1_min) == (0.03, 0.01, 0.4)
    with pytest.raises(ValueError, match="far_max=1.5"):
        C.CalibrationConfig(far_max=1.5)


def test_the_calibration_verdict_is_the_gates_verdict():
    from so8t.calibrate.promotion_gate import evaluate_gate

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 600)
    z = rng.normal(size=(600, 3)) + 3.0 * np.eye(3)[y]
    for far_bound in ("point", "upper95"):
        cfg = C.CalibrationConfig(far_bound=far_bound, far_max=0.05)
        r = C.calibrate(z, y, cfg)
        assert r.verdict == evaluate_gate(r.after.holdout, cfg.gate)
        assert r.verdict.passed == r.passed
        names = [c.name for c in r.verdict.criteria]
        assert ("false_allow_upper95" if far_bound == "upper95" else "false_allow_rate") in names
