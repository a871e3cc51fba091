"""so8t-rollback: move production back by hand (the twin of ``so8t registry rollback``)."""

from __future__ import annotations

from prefect import flow

from registry import HistoryEntry
from release.params import RollbackParams
from release.recipes import rollback as rollback_recipe
from tasks.stages import PrefectStages


@flow(name="so8t-rollback", description="Roll production back to the previous or a given version.")
def rollback(params: RollbackParams = RollbackParams()) -> HistoryEntry | None:  # noqa: B008
    """:func:`release.recipes.rollback`, each stage a Prefect task."""
    return rollback_recipe(params, PrefectStages())
