"""``so8t evaluate``: how a calibrated model's ALLOW / ESCALATE / DENY decisions hold on labelled JSONL.

Plain-Python twins: :func:`so8t.calibrate.evaluate.evaluate` (returns the report, writes nothing),
:func:`so8t.calibrate.evaluate.write_evaluation` (the files) and :func:`so8t.calibrate.evaluate.run_evaluation` (both).
Bad input prints one line ``so8t: error: ...`` and exits 2 before anything is scored or written.
"""

from __future__ import annotations

import argparse

from so8t.calibrate.evaluate import EvaluateConfig


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from so8t.cli import config_values
    from so8t.config import build_config
    from so8t.calibrate.evaluate import evaluate, summary_lines, write_evaluation

    cfg = build_config(EvaluateConfig, config_values(args, EvaluateConfig))
    report = evaluate(cfg)
    js, md = write_evaluation(report, cfg.output_dir)
    c = report.calibration
    print(f"evaluated {report.model.argument} (T {c.temperature:.4g}, tau_deny {c.tau_deny:.4g}, tau_escalate "
          f"{c.tau_escalate:.4g}) on {len(report.files)} file(s):")
    print("\n".join(f"  {line}" for line in summary_lines(report)))
    for w in report.warnings:
        print(f"  warning: {w}")
    print(f"  wrote {md}")
    print(f"        {js}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    from so8t.cli import add_config_flags

    p = sub.add_parser(
        "evaluate", help="Apply a calibrated GGUF (file or registry NAME@REF) to labelled JSONL and report its "
                         "decisions per file, source, category and language.",
        description=(EvaluateConfig.__doc__ or "") + " Reports false-allow rate with a Clopper-Pearson upper bound, "
                    "over-refusal, false-deny and escalation rates, accuracy, macro F1, the confusion matrix and "
                    "decisions/s; writes evaluation.json and evaluation.md. Exit 0 on success, 2 on bad input.",
    )
    add_config_flags(p, EvaluateConfig)
    p.set_defaults(handler=_cmd_evaluate)
