"""The promotion gate of a release: the calibrated held-out metrics against :class:`so8t.calibrate.promotion_gate.GateConfig`,
plus the A/B verdict when it must pass, and the evidence a promotion records."""

from __future__ import annotations

from pydantic import BaseModel

from release.ab import ABOutcome
from so8t.calibrate.calibration import CalibrationResult
from so8t.calibrate.promotion_gate import GateConfig, GateCriterion, GateDecision, evaluate_gate


AB_CRITERION = "ab_non_inferiority"


class CalibrationRun(BaseModel):
    """Where a calibration wrote its files, and the result."""

    results_path: str
    diagram_path: str
    result: CalibrationResult


def with_failed_ab(decision: GateDecision, ab: ABOutcome) -> GateDecision:
    """The gate decision with the A/B non-inferiority verdict added as a failed criterion."""
    crit = GateCriterion(name=AB_CRITERION, value=0.0, threshold=1.0, comparison=">=", passed=False,
                         reason=f"A/B against production {ab.production}: {ab.summary}")
    return GateDecision(passed=False, criteria=(*decision.criteria, crit), failed=(*decision.failed, crit.name),
                        summary=(decision.summary if not decision.passed else "FAIL") + "; " + crit.reason)


def ab_row(ab: ABOutcome, must_pass: bool) -> dict:
    """The A/B step as a row of the gate table, unless it failed the gate (then it is a criterion).

    ``passed`` is a boolean only where the A/B verdict decides (``must_pass``); otherwise it says
    ``skipped`` or ``not required (passed|failed)``, so that the rows whose ``passed`` is False are
    exactly the criteria the promotion failed on.
    """
    role = "non-inferior to production" if must_pass else "informational (ab.must_pass is off)"
    if ab.skipped:
        return {"criterion": AB_CRITERION, "value": None, "threshold": role, "passed": "skipped",
                "reason": f"A/B skipped: {ab.reason}"}
    passed = True if must_pass else f"not required ({'passed' if ab.passed else 'failed'})"
    return {"criterion": AB_CRITERION, "value": None, "threshold": role, "passed": passed,
            "reason": f"A/B against production {ab.production}: {ab.summary}"}


def gate_decision(result: CalibrationResult, gate: GateConfig, ab: ABOutcome | None = None,
                  ab_must_pass: bool = False) -> tuple[GateDecision, list[dict]]:
    """The gate decision on the held-out metrics (and on the A/B verdict when it must pass), and its table rows."""
    decision = evaluate_gate(result.after.holdout, gate)
    if ab is not None and ab_must_pass and ab.passed is False:
        decision = with_failed_ab(decision, ab)
    rows = [{"criterion": c.name, "value": c.value, "threshold": f"{c.comparison} {c.threshold}",
             "passed": c.passed, "reason": c.reason} for c in decision.criteria]
    if ab is not None and AB_CRITERION not in decision.failed:
        rows.append(ab_row(ab, ab_must_pass))
    return decision, rows


def evidence(run: CalibrationRun, decision, **extra) -> dict:
    return {"gate": decision.model_dump(mode="json"), "calibration": run.results_path,
            "temperature": run.result.temperature, "tau_deny": run.result.tau_deny,
            "tau_escalate": run.result.tau_escalate, **extra}
