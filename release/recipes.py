"""The release recipes, written once: build a candidate, calibrate-gate-promote, the whole pipeline, roll back.

Each recipe takes its parameters (:mod:`release.params`) and a :class:`release.stages.Stages`: the plain
one runs every stage here and now (``so8t release ...``, Python, the orchestration benchmark's direct
twin); ``tasks.stages.PrefectStages`` runs them as Prefect tasks, which is all the flows in ``flows/`` add.

- :func:`build_candidate`: train -> bake -> convert -> quantize -> publish a candidate, mirror it to the Hub
  (when configured) and report it.
- :func:`calibrate_gate_promote`: a candidate is calibrated, evaluated on the held-out files, A/B-compared
  with production, and published as a new version holding its files plus its calibration (lineage parent:
  the candidate). Gate failure: both are rejected, production is untouched, the run fails naming the
  failed criteria. Gate pass: promotion plus a smoke test of the new production, undone when the smoke
  test fails. The production version itself (the nightly re-calibration): kept when it passes on the
  data, else production rolls back to the newest earlier production version that passes.
- :func:`run_pipeline`: both, the second on the candidate the first built.
- :func:`rollback`: production back to the previous or a given version.

A version a recipe reads but this host never built (the candidate of a ``candidate.published`` event from another
host, the Hub's production, a rollback target) is pulled from the Hub mirror first when one is configured
(:meth:`release.stages.Stages.ensure_local`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from registry import PRODUCTION, HistoryEntry, Registry, VersionManifest
from release.ab import ABOutcome
from release.checklists import (after_calibration_items, after_conversion_items, after_training_items,
                                before_inference_items, before_training_items)
from release.evaluation import EvaluationSummary
from release.gate import CalibrationRun, evidence
from release.layout import (Staged, bake_config, calibrated_files, calibration_metrics, candidate_files, candidate_metrics,
                            code_revision, convert_config, export_version, lineage_of, plan_run, write_calibrated_modelfile)
from release.params import (CalibrateAndPromoteParams, PipelineParams, RetrainParams, RollbackParams, calibrate_config,
                            train_config)
from release.smoke import main_gguf
from release.stages import Stages
from release.versions import earlier_production_versions, find_candidate, production_version, resolve_version
from so8t.digests import file_digest
from so8t.calibrate.evaluate import EvaluateConfig
from so8t.version_layout import LAYOUT


class GateFailed(RuntimeError):
    """A version failed the promotion gate."""


class PromotionFailed(RuntimeError):
    """A promotion was undone (failed smoke test) or production could not be kept healthy."""


class CandidateSummary(BaseModel):
    """What building a candidate published."""

    name: str
    version: str
    run_dir: str
    gguf: str
    train_steps: int
    resumed_from: str | None


class PromotionSummary(BaseModel):
    """Outcome of a calibrate-and-promote run."""

    name: str
    action: str  # promoted | kept | rolled_back
    version: str  # the version now in production
    candidate: str | None = None
    verdict: str
    gguf: str | None = None


class PipelineSummary(BaseModel):
    """The candidate the pipeline built and what became of it."""

    candidate: CandidateSummary
    promotion: PromotionSummary


# ----------------------------------------------------------------------------- building a candidate
def build_candidate(params: RetrainParams, stages: Stages) -> CandidateSummary:
    """Train, bake, convert, quantize and publish a candidate version (reported when ``emit_event``)."""
    name, root = params.model.name, params.model.registry_root
    plan = plan_run(name, params.work_dir, params.train, params.convert)
    cfg = train_config(params.train, plan.train_dir)
    stages.checklist("before-training", "学習前 (before training)", before_training_items(cfg))
    trained = stages.train(cfg, plan.run_dir)
    stages.checklist("after-training", "学習後 (after training)", after_training_items(trained.output_dir))
    stages.bake(bake_config(plan, trained), plan.run_dir)
    conv_cfg = convert_config(plan, params.convert)
    stages.convert(conv_cfg, plan.run_dir)
    ggufs = stages.quantize(conv_cfg, plan.run_dir)
    stages.checklist("after-conversion", "焼き込み・変換後 (after bake and conversion)",
                     after_conversion_items(plan.baked_dir, ggufs.report_path, conv_cfg.quants))
    files, kinds = candidate_files(plan, trained, ggufs, params.convert.publish_f16)
    main = LAYOUT.gguf(ggufs.path(conv_cfg.quants[0]).name)
    manifest = stages.publish(
        root, name, files, kinds=kinds, metrics=candidate_metrics(trained, ggufs, conv_cfg.quants[0]),
        parameters={"main_gguf": main, "train": cfg.model_dump(mode="json"),
                    "convert": params.convert.model_dump(mode="json"), "run_dir": plan.run_dir},
        lineage={"base_model": plan.base_model, "dataset_hashes": plan.dataset_hashes, "code_revision": code_revision()},
        description=f"candidate: SO8T on {plan.base_model}, {trained.global_step} steps, {conv_cfg.quants[0]}",
        title="Candidate published", mirror=params.mirror)
    stages.mirror(params.mirror, root, name)  # before the event: a worker on another host pulls it from the Hub
    if params.emit_event:
        stages.event("candidate.published", name, manifest.version,
                     {"registry_root": root, "main_gguf": main, "run_dir": plan.run_dir})
    return CandidateSummary(name=name, version=manifest.version, run_dir=plan.run_dir,
                            gguf=str(ggufs.path(conv_cfg.quants[0])), train_steps=trained.global_step,
                            resumed_from=trained.resumed_from)


# ----------------------------------------------------------------------------- calibrate, gate, promote
def calibrate_version(p: CalibrateAndPromoteParams, version: str, title: str,
                      stages: Stages) -> tuple[Staged, CalibrationRun]:
    """Export ``version``, calibrate its served GGUF on the validation data, show the checklist."""
    name, root, work = p.model.name, p.model.registry_root, Path(p.work_dir).expanduser().resolve()
    staged = export_version(root, name, version, str(work / "exports" / name / version))
    gguf = staged.files[main_gguf(Registry(root).manifest(name, version))]
    out = work / "calibration" / name / version / file_digest(Path(p.calibration.val_data))[:12]
    # cache records beside the outputs they describe: a deleted work_dir can never yield a stale hit
    run = stages.calibrate(calibrate_config(p.calibration, p.gate, gguf, out), title, str(out.parent))
    h = run.result.after.holdout
    stages.checklist("after-calibration", f"較正後 (after calibration) {version}",
                     after_calibration_items(run.results_path, h.ece, p.gate.ece_max, p.gate.far_of(h), p.gate.far_max))
    return staged, run


def ab_evaluate(p: CalibrateAndPromoteParams, candidate: str, production: str | None, staged: Staged,
                run: CalibrationRun, stages: Stages) -> ABOutcome:
    """A/B the candidate's served GGUF against production's (skipped, with the reason, when it cannot run)."""
    name, root, reg = p.model.name, p.model.registry_root, Registry(p.model.registry_root)
    work = Path(p.work_dir).expanduser().resolve()
    prod = export_version(root, name, production, str(work / "exports" / name / production)) if production else None
    gguf_a = staged.files[main_gguf(reg.manifest(name, candidate))]
    gguf_b = prod.files[main_gguf(reg.manifest(name, production))] if prod else None
    cal_b = prod.files.get(LAYOUT.calibration) if prod else None
    return stages.ab(candidate, production, gguf_a, gguf_b, run.results_path, cal_b, p.ab,
                     str(Path(run.results_path).parent / f"ab-vs-{production}"))


def evaluate_heldout(p: CalibrateAndPromoteParams, staged: Staged, gguf_rel: str, run: CalibrationRun,
                     stages: Stages) -> EvaluationSummary | None:
    """The calibrated candidate on the held-out files (``so8t evaluate``), shown next to the gate verdict."""
    if not p.evaluation.data:
        return None
    gguf = Path(staged.files[gguf_rel])
    prompt = staged.files.get(LAYOUT.decision_prompt)  # where the candidate carries its training prompt
    cfg = EvaluateConfig(model=str(gguf), data=p.evaluation.data, calibration=run.results_path, decision_prompt=prompt,
                         output_dir=str(Path(run.results_path).parent / "heldout-evaluation"),
                         n_threads=p.evaluation.n_threads, dask_workers=p.evaluation.dask_workers,
                         dask_scheduler=p.evaluation.dask_scheduler)
    return stages.evaluate(cfg, f"Held-out evaluation of {gguf.name}")


def publish_calibrated(p: CalibrateAndPromoteParams, cand: VersionManifest, staged: Staged, run: CalibrationRun,
                       stages: Stages) -> VersionManifest:
    """Publish the candidate's files plus its calibration (and a calibrated Modelfile) as a new version."""
    gguf = Path(staged.files[main_gguf(cand)])
    modelfile = write_calibrated_modelfile(str(gguf), str(gguf.parent / f"Modelfile.calibrated-"
                                                                        f"{Path(run.results_path).parent.name}"),
                                           run.results_path)
    files, kinds = calibrated_files(staged, run.results_path, run.diagram_path, modelfile)
    r, val = run.result, Path(p.calibration.val_data)
    return stages.publish(
        p.model.registry_root, p.model.name, files, kinds=kinds, metrics=calibration_metrics(r.after.holdout),
        parameters={**cand.parameters, "gate": p.gate.model_dump(mode="json"), "calibration": {
            "temperature": r.temperature, "tau_deny": r.tau_deny, "tau_escalate": r.tau_escalate, "val_data": str(val)}},
        lineage=lineage_of(cand, {val.name: file_digest(val)}),
        description=f"{cand.version} calibrated on {val.name}: T={r.temperature:.3g}", title="Calibrated version published",
        mirror=p.mirror)


def calibrate_gate_promote(params: CalibrateAndPromoteParams, stages: Stages) -> PromotionSummary:
    """Calibrate a candidate (or re-calibrate production), gate it, promote with a smoke test (module docstring)."""
    name, root = params.model.name, params.model.registry_root
    ref = params.version or find_candidate(root, name)
    info = resolve_version(root, name, stages.ensure_local(root, name, ref, params.mirror))
    if info.is_production or ref == PRODUCTION:  # the latter: this host lacked production and pulled the Hub's
        return recalibrate_production(params, info.manifest.version, stages)
    candidate, production = info.manifest.version, production_version(root, name)

    staged, run = calibrate_version(params, candidate, f"Calibration of candidate {candidate}", stages)
    ab = ab_evaluate(params, candidate, production, staged, run, stages)
    evaluate_heldout(params, staged, main_gguf(info.manifest), run, stages)
    release = publish_calibrated(params, info.manifest, staged, run, stages)
    decision = stages.gate(run.result, params.gate, f"Gate of {release.version} (calibrated {candidate})", ab,
                           params.ab.must_pass)
    if not decision.passed:
        why = f"gate failed: {decision.summary}"
        for v in dict.fromkeys([release.version, candidate]):
            stages.reject(root, name, v, why, evidence(run, decision))
        stages.event("gate.failed", name, release.version,
                     {"candidate": candidate, "failed": list(decision.failed), "summary": decision.summary})
        stages.mirror(params.mirror, root, name)  # the number is taken on the Hub too, though the version is rejected
        raise GateFailed(f"{name} {release.version} (calibrated {candidate}) failed the promotion gate on "
                         f"{', '.join(decision.failed)}: {decision.summary}; rejected, production unchanged "
                         f"({production or 'none'})")
    try:
        if production is None:  # nothing to roll back to: check the model before it serves
            stages.smoke(root, name, release.version, params.smoke)
        stages.promote_with_smoke(root, name, release.version,
                                  evidence(run, decision, candidate=candidate, ab=ab.model_dump()),
                                  f"gate passed: {decision.summary}", params.smoke)
    except Exception as e:
        now = production_version(root, name)
        if now != release.version:  # restored after the failed smoke test, or never promoted
            stages.reject(root, name, release.version, f"smoke test failed: {e}", {"error": str(e)})
        stages.mirror(params.mirror, root, name)
        raise PromotionFailed(f"{name} {release.version} failed its smoke test ({e}); it is rejected and production "
                              f"is {now or 'still unset'}" + (f" (restored by the {stages.undo})" if production else "")) from e

    served = Registry(root).get(name, PRODUCTION)
    gguf = served.path(main_gguf(served.manifest))
    stages.checklist("before-inference", "推論前 (before inference)", before_inference_items(
        gguf, served.path(LAYOUT.modelfile).read_text(), run.result.temperature))
    stages.mirror(params.mirror, root, name)
    stages.wait_served(params.service, name, release.version)
    return PromotionSummary(name=name, action="promoted", version=release.version, candidate=candidate,
                            verdict=decision.summary, gguf=str(gguf))


def recalibrate_production(p: CalibrateAndPromoteParams, production: str, stages: Stages) -> PromotionSummary:
    """Re-calibrate production on the given data; roll back to an earlier passing version if it fails."""
    name, root = p.model.name, p.model.registry_root
    production = stages.ensure_local(root, name, production, p.mirror)
    data = Path(p.calibration.val_data).name
    _, run = calibrate_version(p, production, f"Re-calibration of production {production}", stages)
    decision = stages.gate(run.result, p.gate, f"Gate of production {production} on {data}")
    if decision.passed:
        return PromotionSummary(name=name, action="kept", version=production, verdict=decision.summary)
    stages.event("gate.failed", name, production,
                 {"production": True, "failed": list(decision.failed), "summary": decision.summary})
    tried = []
    for version in earlier_production_versions(Registry(root), name, production):
        _, cand = calibrate_version(p, version, f"Re-calibration of earlier version {version}", stages)
        verdict = stages.gate(cand.result, p.gate, f"Gate of {version} on {data}")
        tried.append(f"{version}: {verdict.summary}")
        if verdict.passed:
            stages.rollback(root, name, version, f"production {production} failed the gate on {p.calibration.val_data}: "
                                                 f"{decision.summary}", evidence(cand, verdict, failed_production=production))
            stages.event("production.rolled_back", name, version, {"from": production, "summary": decision.summary})
            stages.mirror(p.mirror, root, name)
            stages.wait_served(p.service, name, version)
            return PromotionSummary(name=name, action="rolled_back", version=version, verdict=verdict.summary)
    raise PromotionFailed(
        f"production {name} {production} fails the gate on {p.calibration.val_data} ({decision.summary}) and no earlier "
        f"production version passes on the same data ({'; '.join(tried) or 'none to try'}): production stays "
        f"{production}; retrain or review the validation data")


# ----------------------------------------------------------------------------- the whole pipeline, rollback
def run_pipeline(params: PipelineParams, stages: Stages) -> PipelineSummary:
    """Build a candidate (no event: this run calibrates it itself), then calibrate, gate and promote it."""
    candidate = build_candidate(params.retrain(), stages)
    promotion = calibrate_gate_promote(params.promotion(candidate.version), stages)
    return PipelineSummary(candidate=candidate, promotion=promotion)


def rollback(params: RollbackParams, stages: Stages) -> HistoryEntry | None:
    """Move production back to the previous or a given version; mirror it and wait for the service."""
    root, name = params.model.registry_root, params.model.name
    to = stages.ensure_local(root, name, params.to, params.mirror) if params.to else None
    entry = stages.rollback(root, name, to, params.reason)
    stages.mirror(params.mirror, root, name)
    if entry is not None:
        stages.wait_served(params.service, name, entry.to_version)
    return entry
