"""The promotion gate: each criterion, its reason, and 'escalate everything' failing."""

from __future__ import annotations

import numpy as np
import pytest

from so8t.calibrate.promotion_gate import GateConfig, evaluate_gate
from so8t.calibrate.metrics import compute_metrics
from so8t.calibrate.thresholds import NEVER


def calibrated_scores(n: int = 3_000, seed: int = 0):
    """Well separated, perfectly calibrated scores: labels drawn from the probabilities themselves."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([0.2, 0.2, 0.2], n)  # (n, 3), mostly confident
    y = np.minimum((rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1), 2)
    return p, y


def test_good_model_passes():
    p, y = calibrated_scores()
    rep = compute_metrics(p, y, tau_deny=0.5, tau_escalate=0.95)
    decision = evaluate_gate(rep, GateConfig(far_max=0.05))
    assert decision.passed, decision.summary
    assert decision.failed == () and decision.summary == "PASS"
    assert [c.name for c in decision.criteria] == ["ece", "false_allow_rate", "macro_f1"]
    assert all(c.reason.endswith(": ok") for c in decision.criteria)


def test_escalate_everything_fails_on_macro_f1():
    p, y = calibrated_scores()
    rep = compute_metrics(p, y, tau_deny=NEVER, tau_escalate=NEVER)
    assert rep.escalation_rate == 1.0 and rep.false_allow_rate == 0.0
    decision = evaluate_gate(rep)
    assert not decision.passed and decision.failed == ("macro_f1",)
    assert "macro F1" in decision.summary and "escalation rate 1.00" in decision.summary


def test_every_failing_criterion_is_named():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    p = np.tile([0.98, 0.01, 0.01], (500, 1))  # allow everything, overconfident
    decision = evaluate_gate(compute_metrics(p, y, 0.5, 0.7))
    assert not decision.passed
    assert decision.failed == ("ece", "false_allow_rate", "macro_f1")
    for label in ("ECE", "False Allow Rate", "macro F1"):
        assert label in decision.summary
    far = decision.criteria[1]
    assert far.value == pytest.approx(1.0) and not far.passed and "false allows" in far.reason


def test_upper95_bound_is_used_when_configured():
    p, y = calibrated_scores(n=120, seed=2)  # too few non-ALLOW samples for a 2% bound
    rep = compute_metrics(p, y, 0.5, NEVER)  # allow nothing: point FAR is 0
    point = evaluate_gate(rep, GateConfig(far_bound="point", macro_f1_min=0.0))
    bound = evaluate_gate(rep, GateConfig(far_bound="upper95", macro_f1_min=0.0))
    assert point.criteria[1].passed and point.criteria[1].value == 0.0
    assert not bound.criteria[1].passed and bound.criteria[1].name == "false_allow_upper95"
    assert bound.criteria[1].value == rep.false_allow_upper95 and "add validation data" in bound.criteria[1].reason


def test_undefined_far_fails_closed():
    p = np.tile([0.9, 0.05, 0.05], (20, 1))
    decision = evaluate_gate(compute_metrics(p, np.zeros(20, dtype=int), 0.5, 0.7))
    far = decision.criteria[1]
    assert far.value is None and not far.passed and "undefined" in far.reason
    assert "false_allow_rate" in decision.failed


def test_gate_config_is_strict():
    with pytest.raises(ValueError):
        GateConfig(ece_maximum=0.1)
    with pytest.raises(ValueError, match="far_max=2"):
        GateConfig(far_max=2)
    assert all(f.description for f in GateConfig.model_fields.values())
