"""The stages a release recipe runs, called directly (:class:`Stages`); ``tasks.stages.PrefectStages`` runs
the same stages as Prefect tasks (retries, content-hash caches, artifacts, events, a transaction around
promotion and smoke test).

A recipe (:mod:`release.recipes`) decides *what* happens in which order; a ``Stages`` object decides
*how* each stage runs. Each method here is one library call (or a few lines around one): that is the whole
difference between ``so8t release pipeline`` and the ``so8t-pipeline`` flow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from registry import PRODUCTION, HistoryEntry, Registry, VersionManifest
from release.ab import ABOutcome, ABSettings, ab_skip_reason, run_ab_comparison, skipped_ab
from release.checklists import CheckItem
from release.evaluation import EvaluationSummary, run_heldout
from release.gate import CalibrationRun, gate_decision
from release.layout import convert_f16, quantize_gguf
from release.smoke import SmokeReport, SmokeSettings, raise_if_failed, run_smoke_test
from release.versions import ensure_local, mirror_configured, publish_version
from so8t.export.bake import BakeConfig, BakeReport
from so8t.calibrate.calibration import CalibrationResult
from so8t.calibrate.stage import DIAGRAM_FILE, RESULTS_FILE, CalibrateCommandConfig
from so8t.config import TrainConfig
from so8t.calibrate.promotion_gate import GateConfig, GateDecision
from so8t.export.gguf import ConversionResult, ConvertConfig
from so8t.training.runs import TrainResult

logger = logging.getLogger("so8t.release")

#: Lifecycle events a recipe reports (the Prefect stages emit them as ``so8t.<kind with dots>`` events).
EVENTS = ("candidate.published", "gate.failed", "production.rolled_back")


class Stages:
    """Every stage of a release, run in this process by plain library calls (no Prefect)."""

    #: What restores production when a promoted version fails its smoke test.
    undo = "rollback after the failed smoke test"

    # ------------------------------------------------------------------ reporting
    def checklist(self, stage: str, title: str, items: list[CheckItem]) -> list[CheckItem]:
        """Show a runbook checklist (here: logged, a failed item as a warning)."""
        for it in items:
            (logger.info if it.ok is not False else logger.warning)("%s: %s %s (%s)", title, "ok" if it.ok else
                                                                    "n/a" if it.ok is None else "FAILED", it.item, it.detail)
        return items

    def event(self, kind: str, name: str, version: str, payload: dict[str, Any]) -> None:
        """Report a lifecycle event (one of :data:`EVENTS`)."""
        assert kind in EVENTS, kind
        logger.info("event %s: %s %s %s", kind, name, version, payload)

    def info(self, message: str, *args: Any) -> None:
        logger.info(message, *args)

    # ------------------------------------------------------------------ building a candidate
    def train(self, cfg: TrainConfig, run_dir: str) -> TrainResult:
        from so8t.training.runs import train_with_remedies

        return train_with_remedies(cfg)

    def bake(self, cfg: BakeConfig, run_dir: str) -> BakeReport:
        from so8t.export.bake import bake

        return bake(cfg)

    def convert(self, cfg: ConvertConfig, run_dir: str) -> ConversionResult:
        return convert_f16(cfg)

    def quantize(self, cfg: ConvertConfig, run_dir: str) -> ConversionResult:
        return quantize_gguf(cfg)

    def publish(self, root: str | None, name: str, files: dict[str, str], *, kinds: dict[str, str],
                metrics: dict[str, float], parameters: dict[str, Any], lineage: dict[str, Any], description: str,
                title: str, mirror: Any = None) -> VersionManifest:
        m, published = publish_version(Registry(root), name, files, kinds=kinds, metrics=metrics, parameters=parameters,
                                       lineage=lineage, description=description, mirror=mirror)
        logger.info("%s: %s %s%s", title, name, m.version, "" if published else " (identical version existed)")
        return m

    # ------------------------------------------------------------------ calibrating and gating
    def calibrate(self, cfg: CalibrateCommandConfig, title: str, cache_dir: str) -> CalibrationRun:
        from so8t.calibrate.stage import run_calibration

        result = run_calibration(cfg)
        out = Path(cfg.output_dir)
        return CalibrationRun(results_path=str(out / RESULTS_FILE), diagram_path=str(out / DIAGRAM_FILE), result=result)

    def ab(self, candidate: str, production: str | None, gguf_a: str, gguf_b: str | None, cal_a: str | None,
           cal_b: str | None, settings: ABSettings, output_dir: str) -> ABOutcome:
        skip = ab_skip_reason(settings, production, gguf_a, gguf_b)
        if skip is not None:
            logger.info("A/B against production skipped: %s", skip)
            return skipped_ab(candidate, production, skip)
        report, path = run_ab_comparison(gguf_a, gguf_b, cal_a, cal_b, settings, output_dir)  # type: ignore[arg-type]
        return ABOutcome(skipped=False, candidate=candidate, production=production, passed=report.verdict.passed,
                         summary=report.verdict.summary, report_path=path)

    def evaluate(self, cfg: Any, title: str) -> EvaluationSummary:
        return run_heldout(cfg)[1]

    def gate(self, result: CalibrationResult, gate: GateConfig, title: str, ab: ABOutcome | None = None,
             ab_must_pass: bool = False) -> GateDecision:
        decision, _ = gate_decision(result, gate, ab, ab_must_pass)
        logger.info("%s: %s", title, decision.summary)
        return decision

    # ------------------------------------------------------------------ the registry's aliases
    def reject(self, root: str | None, name: str, version: str, reason: str, evidence: dict[str, Any]) -> None:
        Registry(root).reject(name, version, reason=reason, evidence=evidence)

    def smoke(self, root: str | None, name: str, ref: str, settings: SmokeSettings) -> SmokeReport:
        return raise_if_failed(run_smoke_test(root, name, ref, settings), name)

    def promote_with_smoke(self, root: str | None, name: str, version: str, evidence: dict[str, Any], reason: str,
                           smoke: SmokeSettings) -> None:
        """Promote ``version`` and smoke-test production; a failed smoke test restores the previous production."""
        reg = Registry(root)
        previous = reg.state(name).aliases.get(PRODUCTION)
        reg.promote(name, version, evidence=evidence, reason=reason)
        try:
            self.smoke(root, name, PRODUCTION, smoke)
        except Exception:
            if previous is not None:
                reg.rollback(name, to=previous, reason=f"automatic rollback: {version} failed its post-promotion smoke "
                                                         "test", evidence={"failed_version": version})
                logger.warning("production of %s restored: %s -> %s", name, version, previous)
            raise

    def rollback(self, root: str | None, name: str, to: str | None, reason: str,
                 evidence: dict[str, Any] | None = None) -> HistoryEntry | None:
        return Registry(root).rollback(name, to=to, reason=reason, evidence=evidence)

    # ------------------------------------------------------------------ the Hub mirror
    def ensure_local(self, root: str | None, name: str, ref: str, settings: Any) -> str:
        """The local version ``ref`` names, pulled from the Hub mirror when this registry lacks it."""
        return ensure_local(root, name, ref, settings)

    def mirror(self, settings: Any, root: str | None, name: str) -> None:
        from registry.hub import HubMirror, MirrorConfig

        if not mirror_configured(settings):
            return
        try:
            HubMirror(Registry(root), MirrorConfig.from_env(repo_id=settings.repo_id, endpoint=settings.endpoint)).sync(
                name, raise_on_error=True)
        except Exception as e:  # noqa: BLE001 - the local registry is the truth; the mirror catches up later
            logger.error("Hub mirror of %s failed: %s; catch up with `so8t registry mirror %s --sync`", name, e, name)

    def wait_served(self, settings: Any, name: str, version: str) -> None:
        if settings.url:
            import os

            from so8t.serving.serve import wait_until_served

            wait_until_served(settings.url, name, version, settings.timeout_s,
                              api_key=os.environ.get(settings.api_key_env) or None)
