"""so8t-retrain: train -> bake -> convert -> quantize -> publish a candidate -> emit an event.

The plain-Python twin is ``so8t train`` / ``so8t bake`` / ``so8t gguf convert`` followed by
``so8t registry publish``.
"""

from __future__ import annotations

from prefect import flow
from prefect.utilities.annotations import opaque
from pydantic import BaseModel

from flows.params import RetrainParams, train_config
from tasks.bake import bake_task
from tasks.caching import bind_cache
from tasks.checklists import after_conversion_items, after_training_items, before_training_items, show_checklist
from tasks.events import CANDIDATE_PUBLISHED, emit_model_event
from tasks.gguf import convert_task, quantize_task
from tasks.registry import publish_task
from tasks.release import bake_config, candidate_files, candidate_metrics, code_revision, convert_config, plan_run
from tasks.training import train_task


class CandidateSummary(BaseModel):
    """What the retrain flow published."""

    name: str
    version: str
    run_dir: str
    gguf: str
    train_steps: int
    resumed_from: str | None


@flow(name="so8t-retrain", description="Train, bake, convert, quantize and publish a candidate version.")
def retrain(params: RetrainParams = RetrainParams()) -> CandidateSummary:  # noqa: B008 (Prefect reads the default)
    return build_candidate(params)


def build_candidate(params: RetrainParams) -> CandidateSummary:
    """The retrain flow's stages, run inside the calling flow (``so8t-retrain`` or ``so8t-pipeline``)."""
    name, root = params.model.name, params.model.registry_root
    plan = plan_run(name, params.work_dir, params.train, params.convert)
    cfg = train_config(params.train, plan.train_dir)
    show_checklist("before-training", "学習前 (before training)", before_training_items(cfg))

    train, bake, convert, quantize = bind_cache(plan.run_dir, train_task, bake_task, convert_task, quantize_task)
    trained = train(opaque(cfg))
    show_checklist("after-training", "学習後 (after training)", after_training_items(trained.output_dir))
    bake(opaque(bake_config(plan, trained)))
    conv_cfg = convert_config(plan, params.convert)
    convert(opaque(conv_cfg))
    ggufs = quantize(opaque(conv_cfg))
    show_checklist("after-conversion", "焼き込み・変換後 (after bake and conversion)",
                   after_conversion_items(plan.baked_dir, ggufs.report_path, conv_cfg.quants))

    files, kinds = candidate_files(plan, trained, ggufs, params.convert.publish_f16)
    main = f"gguf/{ggufs.path(conv_cfg.quants[0]).name}"
    manifest = publish_task(
        root, name, opaque(files), kinds=opaque(kinds), metrics=opaque(candidate_metrics(trained, ggufs, conv_cfg.quants[0])),
        parameters=opaque({"main_gguf": main, "train": cfg.model_dump(mode="json"), "convert": params.convert.model_dump(mode="json"),
                           "run_dir": plan.run_dir}),
        lineage=opaque({"base_model": plan.base_model, "dataset_hashes": plan.dataset_hashes, "code_revision": code_revision()}),
        description=f"candidate: SO8T on {plan.base_model}, {trained.global_step} steps, {conv_cfg.quants[0]}",
        title="Candidate published",
    )
    if params.emit_event:
        emit_model_event(CANDIDATE_PUBLISHED, name, manifest.version,
                         {"registry_root": root, "main_gguf": main, "run_dir": plan.run_dir})
    return CandidateSummary(name=name, version=manifest.version, run_dir=plan.run_dir, gguf=str(ggufs.path(conv_cfg.quants[0])),
                            train_steps=trained.global_step, resumed_from=trained.resumed_from)
