"""so8t-calibrate-and-promote: calibrate -> A/B -> gate -> promote + smoke test, with rollback.

- A candidate (``version``, or the newest candidate awaiting calibration) is calibrated, evaluated on
  the held-out files (``evaluation.data``: a table artifact next to the gate verdict, informative), and
  published as a new version that holds the candidate's files plus its calibration (lineage parent:
  the candidate). Gate failure: both are rejected, production is untouched, ``so8t.gate.failed`` is
  emitted and the run fails naming the failed criteria. Gate pass: the promotion and a smoke test
  of the new production model run in one Prefect transaction; a failed smoke test fires the
  promotion's rollback hook, which restores the previous production version.
- The production version itself (``version="production"``, the nightly re-calibration): when it
  fails the gate on the given data, production rolls back to the newest earlier production version
  that passes on the same data (``so8t.production.rolled_back``); if none passes, production
  stays and the run fails saying so.
"""

from __future__ import annotations

from prefect import flow

from release.params import CalibrateAndPromoteParams
from release.recipes import GateFailed, PromotionFailed, PromotionSummary, calibrate_gate_promote  # noqa: F401
from tasks.stages import PrefectStages


@flow(name="so8t-calibrate-and-promote", description="Calibrate a candidate (or production), gate it, promote with smoke test and rollback.")
def calibrate_and_promote(params: CalibrateAndPromoteParams = CalibrateAndPromoteParams()) -> PromotionSummary:  # noqa: B008
    """:func:`release.recipes.calibrate_gate_promote`, each stage a Prefect task."""
    return calibrate_gate_promote(params, PrefectStages())
