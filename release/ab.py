"""The A/B step of a release: its settings, when it runs, and how (``so8t.ab.runner``, looked up at run time).

When the A/B module is not installed, or there is no production to compare with, or production serves
the very same GGUF, the comparison is skipped and the reason recorded instead of failing the release.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from so8t.digests import file_digest
from so8t.shards import DASK_SCHEDULER_HELP, DASK_WORKERS_HELP


class ABSettings(BaseModel):
    """A/B against production (runbook: A/Bテスト)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Run the A/B comparison when there is a production version.")
    limit: int | None = Field(None, ge=1, description="Use only the first N records of each evaluation set (quick runs).")
    max_new_tokens: int = Field(32, ge=1, description="Generation limit per answer.")
    must_pass: bool = Field(False, description="A failed non-inferiority verdict blocks the promotion like a gate failure.")
    margin_bleu: float = Field(2.0, ge=0, description="Verdict: lower CI bound of BLEU(A) - BLEU(B) >= -margin (BLEU points).")
    margin_rouge_l: float = Field(0.02, ge=0, description="Verdict: lower CI bound of ROUGE-L(A) - ROUGE-L(B) >= -margin.")
    margin_far: float = Field(0.01, ge=0, description="Verdict: FAR(A) - FAR(B) <= margin.")
    margin_fdr: float = Field(0.05, ge=0, description="Verdict: FDR(A) - FDR(B) <= margin.")
    margin_macro_f1: float = Field(0.05, ge=0, description="Verdict: macro F1(A) - macro F1(B) >= -margin.")
    min_throughput_ratio: float = Field(0.8, ge=0, description="Verdict: generation tokens/s of A / B >= this.")
    dask_workers: int = Field(0, ge=0, description=DASK_WORKERS_HELP)
    dask_scheduler: str | None = Field(None, description=DASK_SCHEDULER_HELP)

    def verdict_settings(self) -> dict[str, float]:
        """The margins, by their ``ABConfig`` names."""
        return {k: getattr(self, k) for k in VERDICT_FIELDS}


#: ABSettings fields passed to ``so8t.ab.runner.ABConfig`` unchanged (same names, same defaults: tested).
VERDICT_FIELDS = ("margin_bleu", "margin_rouge_l", "margin_far", "margin_fdr", "margin_macro_f1", "min_throughput_ratio")


class ABOutcome(BaseModel):
    """Outcome of the A/B step."""

    skipped: bool
    reason: str = ""
    candidate: str
    production: str | None
    passed: bool | None = None
    summary: str = ""
    report_path: str | None = None


def abtest_module() -> Any | None:
    """``so8t.ab.runner`` when it is installed, else None."""
    if importlib.util.find_spec("so8t.ab.runner") is None:
        return None
    return importlib.import_module("so8t.ab.runner")


def ab_skip_reason(settings: ABSettings, production: str | None, candidate_gguf: str, production_gguf: str | None) -> str | None:
    """Why the A/B comparison cannot or need not run (None: it runs)."""
    if not settings.enabled:
        return "disabled in the flow parameters"
    if production is None or production_gguf is None:
        return "no production version to compare against"
    if file_digest(Path(candidate_gguf)) == file_digest(Path(production_gguf)):
        return f"production {production} serves the same GGUF"
    if abtest_module() is None:
        return "so8t.ab.runner is not available in this installation"
    return None


def run_ab_comparison(candidate_gguf: str, production_gguf: str, candidate_calibration: str | None,
                      production_calibration: str | None, settings: ABSettings, output_dir: str,
                      executor: Any = None) -> tuple[Any, str]:
    """Run ``so8t.ab.runner`` (A: candidate, B: production) and write its report; returns (report, JSON path).

    ``executor``: a shard executor (:mod:`so8t.shards`) for the scoring and generations; None: the plain dask
    cluster ``settings.dask_workers`` / ``settings.dask_scheduler`` ask for, else sequential.
    """
    mod = abtest_module()
    cfg = mod.ABConfig(model_a=candidate_gguf, model_b=production_gguf, calibration_a=candidate_calibration,
                       calibration_b=production_calibration, limit=settings.limit, max_new_tokens=settings.max_new_tokens,
                       dask_workers=settings.dask_workers, dask_scheduler=settings.dask_scheduler,
                       **settings.verdict_settings())
    report = mod.run_ab(cfg, progress=False, executor=executor)
    json_path, _ = mod.write_ab_report(report, output_dir)
    return report, str(json_path)


def skipped_ab(candidate: str, production: str | None, reason: str) -> ABOutcome:
    """The outcome of a skipped comparison (the flows show it as the A/B row of the gate table)."""
    return ABOutcome(skipped=True, reason=reason, candidate=candidate, production=production)
