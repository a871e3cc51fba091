"""so8t-retrain: train -> bake -> convert -> quantize -> publish a candidate -> emit an event.

The recipe is :func:`release.recipes.build_candidate`; its plain twin is ``so8t release retrain`` (or
``so8t train`` / ``so8t bake`` / ``so8t gguf convert`` followed by ``so8t registry publish``).
"""

from __future__ import annotations

from prefect import flow

from release.params import RetrainParams
from release.recipes import CandidateSummary, build_candidate
from tasks.stages import PrefectStages


@flow(name="so8t-retrain", description="Train, bake, convert, quantize and publish a candidate version.")
def retrain(params: RetrainParams = RetrainParams()) -> CandidateSummary:  # noqa: B008 (Prefect reads the default)
    """:func:`release.recipes.build_candidate`, each stage a Prefect task."""
    return build_candidate(params, PrefectStages())
