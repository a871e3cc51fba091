"""ab_evaluate_task: A/B of a candidate against production with ``so8t.ab.runner``, when present.

The A/B module is looked up at run time (importlib): when it is not installed, or there is no
production to compare with, or production serves the very same GGUF, the task records that the
comparison was skipped (and why) instead of failing the flow.
"""

from __future__ import annotations


from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from release.ab import ABOutcome, ABSettings, ab_skip_reason, run_ab_comparison, skipped_ab
from tasks.dask_shards import shard_executor
















@task(name="ab-evaluate", cache_policy=NO_CACHE)
def ab_evaluate_task(candidate: str, production: str | None, candidate_gguf: str, production_gguf: str | None,
                     candidate_calibration: str | None, production_calibration: str | None,
                     settings: ABSettings, output_dir: str) -> ABOutcome:
    """Candidate (A) against production (B): quality, safety, performance, non-inferiority verdict."""
    skip = ab_skip_reason(settings, production, candidate_gguf, production_gguf)
    if skip is not None:
        create_markdown_artifact(f"# A/B evaluation skipped\n\n{candidate} vs {production}: {skip}.\n",
                                 key="ab-evaluation", description=f"A/B skipped: {skip}")
        return skipped_ab(candidate, production, skip)
    with shard_executor(settings.dask_workers, settings.dask_scheduler) as executor:  # shards as task runs on Dask
        report, json_path = run_ab_comparison(candidate_gguf, production_gguf, candidate_calibration,  # type: ignore[arg-type]
                                              production_calibration, settings, output_dir, executor)
    create_markdown_artifact(report.to_markdown(), key="ab-evaluation",
                             description=f"A/B {candidate} (A) vs production {production} (B): {report.verdict.summary}")
    return ABOutcome(skipped=False, candidate=candidate, production=production, passed=report.verdict.passed,
                     summary=report.verdict.summary, report_path=json_path)
