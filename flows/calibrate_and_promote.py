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

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.transactions import transaction
from prefect.utilities.annotations import opaque
from pydantic import BaseModel

from flows.params import CalibrateAndPromoteParams, calibrate_config
from registry import Registry, VersionManifest
from so8t.decision import PROMPT_FILE
from so8t.evaluate import EvaluateConfig
from tasks.abtest import ABOutcome, ab_evaluate_task, ab_skip_reason, skipped_ab
from tasks.caching import bind_cache, file_digest
from tasks.calibration import CalibrationRun, calibrate_task, gate_task
from tasks.checklists import after_calibration_items, before_inference_items, show_checklist
from tasks.evaluation import EvaluationSummary, evaluate_task
from tasks.events import GATE_FAILED, PRODUCTION_ROLLED_BACK, emit_model_event
from tasks.mirror import mirror_if_configured
from tasks.registry import (earlier_production_versions, find_candidate, production_version, promote_task,
                            publish_task, reject_task, resolve_version, rollback_task)
from tasks.release import Staged, calibrated_files, calibration_metrics, export_version, lineage_of, write_calibrated_modelfile
from tasks.serving import wait_served_task
from tasks.smoke import main_gguf, smoke_test_task


class GateFailed(RuntimeError):
    """A version failed the promotion gate."""


class PromotionFailed(RuntimeError):
    """A promotion was undone (failed smoke test) or production could not be kept healthy."""


class PromotionSummary(BaseModel):
    """Outcome of a calibrate-and-promote run."""

    name: str
    action: str  # promoted | kept | rolled_back
    version: str  # the version now in production
    candidate: str | None = None
    verdict: str
    gguf: str | None = None


def calibrate_version(p: CalibrateAndPromoteParams, version: str, title: str) -> tuple[Staged, CalibrationRun]:
    """Export ``version``, calibrate its served GGUF on the validation data, show the checklist."""
    name, root, work = p.model.name, p.model.registry_root, Path(p.work_dir).expanduser().resolve()
    staged = export_version(root, name, version, str(work / "exports" / name / version))
    gguf = staged.files[main_gguf(Registry(root).manifest(name, version))]
    out = work / "calibration" / name / version / file_digest(Path(p.calibration.val_data))[:12]
    # cache records beside the outputs they describe: a deleted work_dir can never yield a stale hit
    (calibrate,) = bind_cache(out.parent, calibrate_task)
    run = calibrate(opaque(calibrate_config(p.calibration, p.gate, gguf, out)), title=title)
    h = run.result.after.holdout
    far = h.false_allow_rate if p.gate.far_bound == "point" else h.false_allow_upper95
    show_checklist("after-calibration", f"較正後 (after calibration) {version}",
                   after_calibration_items(run.results_path, h.ece, p.gate.ece_max, far, p.gate.far_max))
    return staged, run


def ab_evaluate(p: CalibrateAndPromoteParams, candidate: str, production: str | None, staged: Staged,
                run: CalibrationRun) -> ABOutcome:
    """Export production (when there is one) and A/B the candidate's served GGUF against it.

    The ``ab-evaluate`` task runs only when there is something to compare; why a comparison was
    skipped (disabled, no production, same GGUF, no A/B module) is logged and shown as the A/B row
    of the run's ``gate-verdict`` table.
    """
    name, root, reg = p.model.name, p.model.registry_root, Registry(p.model.registry_root)
    prod = export_version(root, name, production, str(Path(p.work_dir).expanduser().resolve() / "exports" / name / production)) if production else None
    cal_b = prod.files.get("calibration/calibration_results.json") if prod else None
    gguf_a = staged.files[main_gguf(reg.manifest(name, candidate))]
    gguf_b = prod.files[main_gguf(reg.manifest(name, production))] if prod else None
    skip = ab_skip_reason(p.ab, production, gguf_a, gguf_b)
    if skip is not None:
        get_run_logger().info("A/B against production skipped: %s", skip)
        return skipped_ab(candidate, production, skip)
    return ab_evaluate_task(candidate, production, gguf_a, gguf_b, run.results_path, cal_b, opaque(p.ab),
                            str(Path(run.results_path).parent / f"ab-vs-{production}"))


def evaluate_heldout(p: CalibrateAndPromoteParams, staged: Staged, gguf_rel: str, run: CalibrationRun) -> EvaluationSummary | None:
    """The calibrated candidate on the held-out files (``so8t evaluate``), a table next to the gate verdict."""
    if not p.evaluation.data:
        return None
    gguf = Path(staged.files[gguf_rel])
    prompt = staged.files.get(f"gguf/{PROMPT_FILE}")  # where the candidate carries its training prompt
    cfg = EvaluateConfig(model=str(gguf), data=p.evaluation.data, calibration=run.results_path, decision_prompt=prompt,
                         output_dir=str(Path(run.results_path).parent / "heldout-evaluation"), n_threads=p.evaluation.n_threads)
    return evaluate_task(opaque(cfg), title=f"Held-out evaluation of {gguf.name}")


def publish_calibrated(p: CalibrateAndPromoteParams, cand: VersionManifest, staged: Staged, run: CalibrationRun) -> VersionManifest:
    """Publish the candidate's files plus its calibration (and a calibrated Modelfile) as a new version."""
    gguf = Path(staged.files[main_gguf(cand)])
    modelfile = write_calibrated_modelfile(str(gguf), str(gguf.parent / f"Modelfile.calibrated-{Path(run.results_path).parent.name}"), run.results_path)
    files, kinds = calibrated_files(staged, run.results_path, run.diagram_path, modelfile)
    r, val = run.result, Path(p.calibration.val_data)
    return publish_task(
        p.model.registry_root, p.model.name, opaque(files), kinds=opaque(kinds), metrics=opaque(calibration_metrics(r.after.holdout)),
        parameters=opaque({**cand.parameters, "gate": p.gate.model_dump(mode="json"), "calibration": {
            "temperature": r.temperature, "tau_deny": r.tau_deny, "tau_escalate": r.tau_escalate, "val_data": str(val)}}),
        lineage=opaque(lineage_of(cand, {val.name: file_digest(val)})),
        description=f"{cand.version} calibrated on {val.name}: T={r.temperature:.3g}", title="Calibrated version published")


def evidence(run: CalibrationRun, decision, **extra) -> dict:
    return {"gate": decision.model_dump(mode="json"), "calibration": run.results_path,
            "temperature": run.result.temperature, "tau_deny": run.result.tau_deny,
            "tau_escalate": run.result.tau_escalate, **extra}


@flow(name="so8t-calibrate-and-promote", description="Calibrate a candidate (or production), gate it, promote with smoke test and rollback.")
def calibrate_and_promote(params: CalibrateAndPromoteParams = CalibrateAndPromoteParams()) -> PromotionSummary:  # noqa: B008
    return calibrate_gate_promote(params)


def calibrate_gate_promote(params: CalibrateAndPromoteParams) -> PromotionSummary:
    """The calibrate-and-promote flow's stages, run inside the calling flow (that flow or ``so8t-pipeline``)."""
    name, root = params.model.name, params.model.registry_root
    info = resolve_version(root, name, params.version or find_candidate(root, name))
    if info.is_production:
        return recalibrate_production(params, info.manifest.version)
    candidate, production = info.manifest.version, production_version(root, name)

    staged, run = calibrate_version(params, candidate, f"Calibration of candidate {candidate}")
    ab = ab_evaluate(params, candidate, production, staged, run)
    evaluate_heldout(params, staged, main_gguf(info.manifest), run)
    release = publish_calibrated(params, info.manifest, staged, run)

    decision = gate_task(opaque(run.result), opaque(params.gate), title=f"Gate of {release.version} (calibrated {candidate})",
                         ab=opaque(ab), ab_must_pass=params.ab.must_pass)
    if not decision.passed:
        why = f"gate failed: {decision.summary}"
        for v in dict.fromkeys([release.version, candidate]):
            reject_task(root, name, v, reason=why, evidence=opaque(evidence(run, decision)))
        emit_model_event(GATE_FAILED, name, release.version, {"candidate": candidate, "failed": list(decision.failed), "summary": decision.summary})
        raise GateFailed(f"{name} {release.version} (calibrated {candidate}) failed the promotion gate on "
                         f"{', '.join(decision.failed)}: {decision.summary}; rejected, production unchanged ({production or 'none'})")

    try:
        if production is None:  # nothing to roll back to: check the model before it serves
            smoke_test_task(root, name, release.version, opaque(params.smoke))
        with transaction():
            promote_task(root, name, release.version, evidence=opaque(evidence(run, decision, candidate=candidate, ab=ab.model_dump())),
                         reason=f"gate passed: {decision.summary}")
            smoke_test_task(root, name, "production", opaque(params.smoke))
    except Exception as e:
        now = production_version(root, name)
        if now != release.version:  # restored by the rollback hook, or never promoted
            reject_task(root, name, release.version, reason=f"smoke test failed: {e}", evidence=opaque({"error": str(e)}))
        raise PromotionFailed(f"{name} {release.version} failed its smoke test ({e}); it is rejected and production "
                              f"is {now or 'still unset'}" + (" (restored by the transaction rollback)" if production else "")) from e

    served = Registry(root).get(name, "production")
    gguf = served.path(main_gguf(served.manifest))
    show_checklist("before-inference", "推論前 (before inference)", before_inference_items(
        gguf, served.path("gguf/Modelfile").read_text(), run.result.temperature))
    mirror_if_configured(params.mirror, root, name)
    wait_served_task(params.service, name, release.version)
    return PromotionSummary(name=name, action="promoted", version=release.version, candidate=candidate,
                            verdict=decision.summary, gguf=str(gguf))


def recalibrate_production(p: CalibrateAndPromoteParams, production: str) -> PromotionSummary:
    """Re-calibrate production on the given data; roll back to an earlier passing version if it fails."""
    name, root = p.model.name, p.model.registry_root
    _, run = calibrate_version(p, production, f"Re-calibration of production {production}")
    decision = gate_task(opaque(run.result), opaque(p.gate), title=f"Gate of production {production} on {Path(p.calibration.val_data).name}")
    if decision.passed:
        return PromotionSummary(name=name, action="kept", version=production, verdict=decision.summary)
    emit_model_event(GATE_FAILED, name, production, {"production": True, "failed": list(decision.failed), "summary": decision.summary})
    tried = []
    for version in earlier_production_versions(Registry(root), name, production):
        _, cand = calibrate_version(p, version, f"Re-calibration of earlier version {version}")
        verdict = gate_task(opaque(cand.result), opaque(p.gate), title=f"Gate of {version} on {Path(p.calibration.val_data).name}")
        tried.append(f"{version}: {verdict.summary}")
        if verdict.passed:
            rollback_task(root, name, to=version, evidence=opaque(evidence(cand, verdict, failed_production=production)),
                          reason=f"production {production} failed the gate on {p.calibration.val_data}: {decision.summary}")
            emit_model_event(PRODUCTION_ROLLED_BACK, name, version, {"from": production, "summary": decision.summary})
            mirror_if_configured(p.mirror, root, name)
            wait_served_task(p.service, name, version)
            return PromotionSummary(name=name, action="rolled_back", version=version, verdict=verdict.summary)
    raise PromotionFailed(
        f"production {name} {production} fails the gate on {p.calibration.val_data} ({decision.summary}) and no earlier "
        f"production version passes on the same data ({'; '.join(tried) or 'none to try'}): production stays "
        f"{production}; retrain or review the validation data")
