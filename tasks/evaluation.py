"""evaluate_task: the calibrated candidate's decisions on the project's own held-out data.

One library call (``so8t.evaluate.run_evaluation``: the served GGUF, its calibration and decision
prompt, scored as calibration scores) plus a table artifact that sits next to the gate verdict:
one row per file and source, with FAR and its upper bound, over-refusal, macro F1 and throughput.
The evaluation informs; it is not a gate criterion (the gate reads the calibration split's
held-out part).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from so8t.evaluate import EvaluateConfig, EvaluationReport, run_evaluation
from tasks.caching import ContentHash, split_paths

#: The project's own held-out split (never trained or calibrated on): data/README.md.
BUNDLED_TEST = str(Path(__file__).resolve().parent.parent / "data" / "decision_test.jsonl")


class EvaluationSettings(BaseModel):
    """Held-out evaluation of a calibrated candidate (``so8t evaluate``), shown next to the gate verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str | None = Field(BUNDLED_TEST, description="Labelled JSONL files, comma-separated, never used for training "
                                                       "or calibration; None: no evaluation.")
    n_threads: int = Field(0, ge=0, description="llama.cpp threads (0: half the logical cores).")


class EvaluationSummary(BaseModel):
    """Where the report is, and its rows."""

    json_path: str
    markdown_path: str
    rows: list[dict]


def evaluation_rows(report: EvaluationReport) -> list[dict]:
    """One row per file's overall group and per source: the numbers a reviewer compares with the gate."""
    rows = []
    for f in report.files:
        for g in f.groups:
            if g.kind not in ("overall", "source"):
                continue
            rows.append({"file": Path(f.path).name, "group": g.group, "n": g.n, "far": g.false_allow_rate,
                         "far_upper": g.false_allow_upper, "over_refusal": g.over_refusal_rate,
                         "false_deny_rate": g.false_deny_rate, "macro_f1": g.macro_f1,
                         "decisions_per_s": f.scoring.decisions_per_second if g.kind == "overall" else None})
    return rows


def _evaluation_inputs(params: dict) -> list[str]:
    cfg: EvaluateConfig = params["cfg"]
    return [cfg.model, *(c for c in (cfg.calibration, cfg.decision_prompt) if c), *split_paths(cfg.data)]


@task(name="evaluate-heldout", retries=1, retry_delay_seconds=5,
      cache_policy=ContentHash(input_paths=_evaluation_inputs), persist_result=True)
def evaluate_task(cfg: EvaluateConfig, title: str = "Held-out evaluation") -> EvaluationSummary:
    """Apply the calibrated model to the held-out files; the rows become the ``heldout-evaluation`` table."""
    report = run_evaluation(cfg)
    rows = evaluation_rows(report)
    o = report.files[0].overall
    create_table_artifact(rows, key="heldout-evaluation",
                          description=f"{title}: n {o.n}, FAR {o.false_allow_rate}, over-refusal {o.over_refusal_rate}, "
                                      f"macro F1 {o.macro_f1:.3f}")
    out = Path(cfg.output_dir)
    return EvaluationSummary(json_path=str(out / "evaluation.json"), markdown_path=str(out / "evaluation.md"), rows=rows)
