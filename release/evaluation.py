"""The held-out evaluation step of a release (``so8t evaluate`` on the project's own test split): its
settings and the rows shown next to the gate verdict. It informs; it is not a gate criterion."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from release import DATA_DIR
from so8t.calibrate.evaluate import EvaluateConfig, EvaluationReport, run_evaluation
from so8t.shards import DASK_SCHEDULER_HELP, DASK_WORKERS_HELP, ShardExecutor


#: The project's own held-out split (never trained or calibrated on): data/README.md.
BUNDLED_TEST = str(DATA_DIR / "decision_test.jsonl")


class EvaluationSettings(BaseModel):
    """Held-out evaluation of a calibrated candidate (``so8t evaluate``), shown next to the gate verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str | None = Field(BUNDLED_TEST, description="Labelled JSONL files, comma-separated, never used for training "
                                                       "or calibration; None: no evaluation.")
    n_threads: int = Field(0, ge=0, description="llama.cpp threads (0: half the logical cores; with dask: each "
                                                "worker's thread count).")
    dask_workers: int = Field(0, ge=0, description=DASK_WORKERS_HELP)
    dask_scheduler: str | None = Field(None, description=DASK_SCHEDULER_HELP)


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


def run_heldout(cfg: EvaluateConfig, executor: ShardExecutor | None = None) -> tuple[EvaluationReport, EvaluationSummary]:
    """``so8t evaluate`` with ``cfg`` (report files written to ``cfg.output_dir``), and its summary rows."""
    report = run_evaluation(cfg, executor)
    out = Path(cfg.output_dir)
    return report, EvaluationSummary(json_path=str(out / "evaluation.json"), markdown_path=str(out / "evaluation.md"),
                                     rows=evaluation_rows(report))
