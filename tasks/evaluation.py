"""evaluate_task: the calibrated candidate's decisions on the project's own held-out data.

One library call (``so8t.calibrate.evaluate.run_evaluation``: the served GGUF, its calibration and decision
prompt, scored as calibration scores) plus a table artifact that sits next to the gate verdict:
one row per file and source, with FAR and its upper bound, over-refusal, macro F1 and throughput.
The evaluation informs; it is not a gate criterion (the gate reads the calibration split's
held-out part).
"""

from __future__ import annotations


from prefect import task
from prefect.artifacts import create_table_artifact

from release.evaluation import EvaluationSummary, run_heldout
from so8t.calibrate.evaluate import EvaluateConfig
from tasks.caching import ContentHash
from tasks.dask_shards import shard_executor
from so8t.digests import split_paths









def _evaluation_inputs(params: dict) -> list[str]:
    cfg: EvaluateConfig = params["cfg"]
    return [cfg.model, *(c for c in (cfg.calibration, cfg.decision_prompt) if c), *split_paths(cfg.data)]


@task(name="evaluate-heldout", retries=1, retry_delay_seconds=5,
      cache_policy=ContentHash(input_paths=_evaluation_inputs), persist_result=True)
def evaluate_task(cfg: EvaluateConfig, title: str = "Held-out evaluation") -> EvaluationSummary:
    """Apply the calibrated model to the held-out files; the rows become the ``heldout-evaluation`` table."""
    with shard_executor(cfg.dask_workers, cfg.dask_scheduler) as executor:  # shards as task runs on Dask, if asked
        report, summary = run_heldout(cfg, executor)
    o = report.files[0].overall
    create_table_artifact(summary.rows, key="heldout-evaluation",
                          description=f"{title}: n {o.n}, FAR {o.false_allow_rate}, over-refusal {o.over_refusal_rate}, "
                                      f"macro F1 {o.macro_f1:.3f}")
    return summary
