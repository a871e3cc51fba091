"""so8t-pipeline: the whole recipe in one flow run.

train -> bake -> convert -> quantize -> publish candidate   (the stages of so8t-retrain, without its
event: this flow calibrates the candidate itself) -> calibrate -> A/B against production -> gate ->
promote with smoke test -> mirror   (the stages of so8t-calibrate-and-promote).

The two halves are the same functions those flows run, called here directly rather than as
sub-flows: every task run, artifact and checklist of the recipe shows on this one run's page, and
the run does not pay for two more flow runs (about 0.35 s CPU and 2 s wall each time; see
BENCHMARKS.md, *Orchestration*).
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.calibrate_and_promote import PromotionSummary, calibrate_gate_promote
from flows.params import CalibrateAndPromoteParams, PipelineParams, RetrainParams
from flows.retrain import CandidateSummary, build_candidate


class PipelineSummary(BaseModel):
    """The candidate the pipeline built and what became of it."""

    candidate: CandidateSummary
    promotion: PromotionSummary


@flow(name="so8t-pipeline", description="Train, bake, convert, quantize, publish, calibrate, A/B, gate, promote, mirror.")
def pipeline(params: PipelineParams = PipelineParams()) -> PipelineSummary:  # noqa: B008
    candidate = build_candidate(RetrainParams(model=params.model, work_dir=params.work_dir, train=params.train,
                                              convert=params.convert, emit_event=False))
    promotion = calibrate_gate_promote(CalibrateAndPromoteParams(
        model=params.model, version=candidate.version, work_dir=params.work_dir, calibration=params.calibration,
        gate=params.gate, ab=params.ab, evaluation=params.evaluation, smoke=params.smoke, mirror=params.mirror,
        service=params.service))
    return PipelineSummary(candidate=candidate, promotion=promotion)
