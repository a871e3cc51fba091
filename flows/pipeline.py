"""so8t-pipeline: the whole recipe in one flow run.

train -> bake -> convert -> quantize -> publish candidate (the stages of so8t-retrain, without its event:
this flow calibrates the candidate itself) -> calibrate -> A/B against production -> gate -> promote with
smoke test -> mirror (the stages of so8t-calibrate-and-promote): :func:`release.recipes.run_pipeline`.

The two halves run inside this one flow run rather than as sub-flows: every task run, artifact and
checklist of the recipe shows on this run's page, and the run does not pay for two more flow runs
(about 0.35 s CPU and 2 s wall each time; see BENCHMARKS.md, *Orchestration*).
"""

from __future__ import annotations

from prefect import flow

from release.params import PipelineParams
from release.recipes import PipelineSummary, run_pipeline
from tasks.stages import PrefectStages


@flow(name="so8t-pipeline", description="Train, bake, convert, quantize, publish, calibrate, A/B, gate, promote, mirror.")
def pipeline(params: PipelineParams = PipelineParams()) -> PipelineSummary:  # noqa: B008
    """:func:`release.recipes.run_pipeline`, each stage a Prefect task."""
    return run_pipeline(params, PrefectStages())
