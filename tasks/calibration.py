"""calibrate_task and gate_task: score a GGUF and calibrate (``so8t.calibrate.stage``), then gate.

The calibration report artifact is Markdown with the reliability diagram embedded as a data URI,
so the Prefect UI shows it without any file server.
"""

from __future__ import annotations

import base64
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from release.gate import CalibrationRun, gate_decision
from so8t.calibrate.calibration import CalibrationResult
from so8t.calibrate.stage import DIAGRAM_FILE, RESULTS_FILE, CalibrateCommandConfig, run_calibration
from so8t.calibrate.promotion_gate import GateConfig, GateDecision
from so8t.calibrate.metrics import MetricReport
from release.ab import ABOutcome
from tasks.caching import ContentHash
from tasks.dask_shards import shard_executor





def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4f}"


def metric_rows(before: MetricReport, after: MetricReport) -> list[dict]:
    """Held-out metrics before and after calibration, one row per metric."""
    names = ("ece", "classwise_ece", "brier", "nll", "macro_f1", "false_allow_rate", "false_allow_upper95",
             "false_deny_rate", "escalation_rate", "decision_accuracy")
    return [{"metric": n, "before": getattr(before, n), "after": getattr(after, n)} for n in names]


def calibration_markdown(run: CalibrationRun, title: str) -> str:
    """The calibration report: parameters, held-out metrics, verdict and the reliability diagram."""
    r = run.result
    b, a = r.before.holdout, r.after.holdout
    png = base64.b64encode(Path(run.diagram_path).read_bytes()).decode()
    rows = "\n".join(f"| {m['metric']} | {_fmt(m['before'])} | {_fmt(m['after'])} |" for m in metric_rows(b, a))
    verdict = "PASS" if r.passed else "FAIL"
    return (
        f"# {title}\n\n"
        f"**Verdict: {verdict}**" + ("" if r.passed else f" — {r.verdict.summary}") + "\n\n"
        f"Model `{Path(r.model_path or '').name}` (sha256 `{(r.model_sha256 or '')[:12]}`), data "
        f"`{Path(r.data_path or '').name}`: {r.n_samples} samples ({r.n_fit} fit, {r.n_holdout} held out).\n\n"
        f"| parameter | before | after |\n|---|---|---|\n"
        f"| temperature | {r.before.temperature:.4g} | {r.temperature:.4g} |\n"
        f"| tau_deny | {r.before.tau_deny:.4g} | {r.tau_deny:.4g} |\n"
        f"| tau_escalate | {r.before.tau_escalate:.4g} | {r.tau_escalate:.4g} |\n\n"
        f"## Held-out metrics\n\n| metric | before | after |\n|---|---|---|\n{rows}\n\n"
        f"## Reliability diagram\n\n![reliability diagram](data:image/png;base64,{png})\n\n"
        f"Files: `{run.results_path}`, `{run.diagram_path}`\n"
        + ("".join(f"\n- warning: {w}" for w in r.warnings))
    )


def _calibration_inputs(params: dict) -> list[str]:
    cfg: CalibrateCommandConfig = params["cfg"]
    return [cfg.model, cfg.val_data]


@task(name="calibrate-gguf", retries=1, retry_delay_seconds=5,
      cache_policy=ContentHash(input_paths=_calibration_inputs), persist_result=True)
def calibrate_task(cfg: CalibrateCommandConfig, title: str = "Calibration") -> CalibrationRun:
    """Score the GGUF on the validation data, fit temperature and thresholds, write the results.

    With ``cfg.dask_workers`` > 1 or ``cfg.dask_scheduler`` the scoring runs in shards, one ``so8t-shard``
    task run each on prefect-dask's DaskTaskRunner (:mod:`tasks.dask_shards`); same scores, same cache entry.
    """
    with shard_executor(cfg.dask_workers, cfg.dask_scheduler) as executor:
        result = run_calibration(cfg, executor)
    out = Path(cfg.output_dir)
    run = CalibrationRun(results_path=str(out / RESULTS_FILE), diagram_path=str(out / DIAGRAM_FILE), result=result)
    create_markdown_artifact(calibration_markdown(run, title), key="calibration-report",
                             description=f"{title}: {'PASS' if result.passed else 'FAIL'}")
    return run








@task(name="evaluate-gate")
def gate_task(result: CalibrationResult, gate: GateConfig, title: str = "Promotion gate", ab: ABOutcome | None = None,
              ab_must_pass: bool = False) -> GateDecision:
    """The promotion gate on the held-out metrics after calibration, and on the A/B verdict when it must pass.

    The ``gate-verdict`` table shows every criterion of the decision; the A/B step (when the flow
    ran one, or skipped it) is a row too, whether it decides or only informs.
    """
    decision, rows = gate_decision(result, gate, ab, ab_must_pass)
    create_table_artifact(rows, key="gate-verdict", description=f"{title}: {decision.summary}")
    return decision
