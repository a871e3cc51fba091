"""so8t-pipeline: the whole recipe, as two sub-flows.

train -> bake -> convert -> quantize -> publish candidate   (so8t-retrain, no event: this flow
calibrates the candidate itself) -> calibrate -> A/B against production -> gate -> promote with
smoke test -> mirror   (so8t-calibrate-and-promote).
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.calibrate_and_promote import PromotionSummary, calibrate_and_promote
from flows.params import CalibrateAndPromoteParams, PipelineParams, RetrainParams
from flows.retrain import CandidateSummary, retrain


class PipelineSummary(BaseModel):
    """The candidate the pipeline built and what became of it."""

    candidate: CandidateSummary
    promotion: PromotionSummary


@flow(name="so8t-pipeline", description="Train, bake, convert, quantize, publish, calibrate, A/B, gate, promote, mirror.")
def pipeline(params: PipelineParams = PipelineParams()) -> PipelineSummary:  # noqa: B008
    candidate = retrain(RetrainParams(model=params.model, work_dir=params.work_dir, train=params.train,
                                      convert=params.convert, emit_event=False))
    promotion = calibrate_and_promote(CalibrateAndPromoteParams(
        model=params.model, version=candidate.version, work_dir=params.work_dir, calibration=params.calibration,
        gate=params.gate, ab=params.ab, smoke=params.smoke, mirror=params.mirror))
    return PipelineSummary(candidate=candidate, promotion=promotion)
