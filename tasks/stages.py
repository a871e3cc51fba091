"""The release stages as Prefect tasks: what the flows hand to the recipes of :mod:`release.recipes`.

Each method calls one task (retries, content-hash cache records kept beside the outputs they describe,
artifacts); reporting goes to the run's checklist artifact, its events and its log; promotion and the
smoke test of the new production run in one Prefect transaction whose rollback hook restores the previous
production. Everything else is :class:`release.stages.Stages`, unchanged.
"""

from __future__ import annotations

from typing import Any

from prefect.logging import get_run_logger
from prefect.transactions import transaction
from prefect.utilities.annotations import opaque

from registry import HistoryEntry, VersionManifest
from release.ab import ABOutcome, ABSettings, ab_skip_reason, skipped_ab
from release.checklists import CheckItem
from release.evaluation import EvaluationSummary
from release.gate import CalibrationRun
from release.smoke import SmokeReport, SmokeSettings
from release.stages import Stages
from so8t.export.bake import BakeConfig, BakeReport
from so8t.calibrate.calibration import CalibrationResult
from so8t.calibrate.stage import CalibrateCommandConfig
from so8t.config import TrainConfig
from so8t.calibrate.promotion_gate import GateConfig, GateDecision
from so8t.export.gguf import ConversionResult, ConvertConfig
from so8t.training.runs import TrainResult
from tasks.abtest import ab_evaluate_task
from tasks.bake import bake_task
from tasks.caching import bind_cache
from tasks.calibration import calibrate_task, gate_task
from tasks.checklists import show_checklist
from tasks.evaluation import evaluate_task
from tasks.events import CANDIDATE_PUBLISHED, GATE_FAILED, PRODUCTION_ROLLED_BACK, emit_model_event
from tasks.gguf import convert_task, quantize_task
from tasks.mirror import ensure_local_or_pull, mirror_if_configured
from tasks.registry import promote_task, publish_task, reject_task, rollback_task
from tasks.serving import wait_served_task
from tasks.smoke import smoke_test_task
from tasks.training import train_task

EVENT_NAMES = {"candidate.published": CANDIDATE_PUBLISHED, "gate.failed": GATE_FAILED,
               "production.rolled_back": PRODUCTION_ROLLED_BACK}


class PrefectStages(Stages):
    """Every stage as a Prefect task run inside the calling flow."""

    undo = "transaction rollback"

    def checklist(self, stage: str, title: str, items: list[CheckItem]) -> list[CheckItem]:
        return show_checklist(stage, title, items)

    def event(self, kind: str, name: str, version: str, payload: dict[str, Any]) -> None:
        emit_model_event(EVENT_NAMES[kind], name, version, payload)

    def info(self, message: str, *args: Any) -> None:
        get_run_logger().info(message, *args)

    def train(self, cfg: TrainConfig, run_dir: str) -> TrainResult:
        (train,) = bind_cache(run_dir, train_task)
        return train(opaque(cfg))

    def bake(self, cfg: BakeConfig, run_dir: str) -> BakeReport:
        (bake,) = bind_cache(run_dir, bake_task)
        return bake(opaque(cfg))

    def convert(self, cfg: ConvertConfig, run_dir: str) -> ConversionResult:
        (convert,) = bind_cache(run_dir, convert_task)
        return convert(opaque(cfg))

    def quantize(self, cfg: ConvertConfig, run_dir: str) -> ConversionResult:
        (quantize,) = bind_cache(run_dir, quantize_task)
        return quantize(opaque(cfg))

    def publish(self, root: str | None, name: str, files: dict[str, str], *, kinds: dict[str, str],
                metrics: dict[str, float], parameters: dict[str, Any], lineage: dict[str, Any], description: str,
                title: str, mirror: Any = None) -> VersionManifest:
        return publish_task(root, name, opaque(files), kinds=opaque(kinds), metrics=opaque(metrics),
                            parameters=opaque(parameters), lineage=opaque(lineage), description=description, title=title,
                            mirror=mirror)

    def calibrate(self, cfg: CalibrateCommandConfig, title: str, cache_dir: str) -> CalibrationRun:
        (calibrate,) = bind_cache(cache_dir, calibrate_task)
        return calibrate(opaque(cfg), title=title)

    def ab(self, candidate: str, production: str | None, gguf_a: str, gguf_b: str | None, cal_a: str | None,
           cal_b: str | None, settings: ABSettings, output_dir: str) -> ABOutcome:
        skip = ab_skip_reason(settings, production, gguf_a, gguf_b)
        if skip is not None:  # no task run for nothing to compare; the gate table shows why
            get_run_logger().info("A/B against production skipped: %s", skip)
            return skipped_ab(candidate, production, skip)
        return ab_evaluate_task(candidate, production, gguf_a, gguf_b, cal_a, cal_b, opaque(settings), output_dir)

    def evaluate(self, cfg: Any, title: str) -> EvaluationSummary:
        return evaluate_task(opaque(cfg), title=title)

    def gate(self, result: CalibrationResult, gate: GateConfig, title: str, ab: ABOutcome | None = None,
             ab_must_pass: bool = False) -> GateDecision:
        return gate_task(opaque(result), opaque(gate), title=title, ab=opaque(ab), ab_must_pass=ab_must_pass)

    def reject(self, root: str | None, name: str, version: str, reason: str, evidence: dict[str, Any]) -> None:
        reject_task(root, name, version, reason=reason, evidence=opaque(evidence))

    def smoke(self, root: str | None, name: str, ref: str, settings: SmokeSettings) -> SmokeReport:
        return smoke_test_task(root, name, ref, opaque(settings))

    def promote_with_smoke(self, root: str | None, name: str, version: str, evidence: dict[str, Any], reason: str,
                           smoke: SmokeSettings) -> None:
        with transaction():  # a failed smoke test fires promote_task's rollback hook
            promote_task(root, name, version, evidence=opaque(evidence), reason=reason)
            smoke_test_task(root, name, "production", opaque(smoke))

    def rollback(self, root: str | None, name: str, to: str | None, reason: str,
                 evidence: dict[str, Any] | None = None) -> HistoryEntry | None:
        return rollback_task(root, name, to=to, reason=reason, evidence=opaque(evidence) if evidence else None)

    def ensure_local(self, root: str | None, name: str, ref: str, settings: Any) -> str:
        return ensure_local_or_pull(settings, root, name, ref)

    def mirror(self, settings: Any, root: str | None, name: str) -> None:
        mirror_if_configured(settings, root, name)

    def wait_served(self, settings: Any, name: str, version: str) -> None:
        wait_served_task(settings, name, version)
