"""bake_task: ``so8t.export.bake.bake`` (merge LoRA, fold the SO(8) rotations, verify) as a cached task."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from so8t.export.bake import BakeConfig, BakeReport, bake
from tasks.caching import ContentHash
from so8t.digests import maybe_path


def _bake_inputs(params: dict) -> list[str | None]:
    cfg: BakeConfig = params["cfg"]
    return [cfg.model_path, maybe_path(cfg.base_model)]


@task(name="bake-so8t", retries=1, retry_delay_seconds=5,
      cache_policy=ContentHash(input_paths=_bake_inputs), persist_result=True)
def bake_task(cfg: BakeConfig) -> BakeReport:
    """Bake the trained adapter and gates into a plain model at ``cfg.output_path``."""
    report = bake(cfg)
    create_table_artifact(
        [{"metric": k, "value": v, "limit": report.tolerances.get(k)} for k, v in (
            ("max_abs_logit_delta", report.max_abs_logit_delta), ("mean_kl", report.mean_kl),
            ("max_kl", report.max_kl), ("top1_agreement", report.top1_agreement),
            ("layers_folded", len(report.layers_folded)), ("probe_tokens", report.probe_tokens))],
        key="bake-check", description=f"Bake-in verification: {'passed' if report.passed else 'FAILED'} "
                                      f"(baked model: {report.output_path})",
    )
    return report
