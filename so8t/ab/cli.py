"""``so8t ab``: A/B evaluation of two GGUF models (runbook: "A/Bテスト").

Plain-Python twins: :func:`so8t.ab.runner.run_ab` (returns the report, writes nothing) and
:func:`so8t.ab.runner.write_ab_report` (the files); the Prefect ``ab_evaluate`` task calls both.
Bad input prints one line and exits 2 before anything is written; a failed verdict exits 1 only
with ``--fail_on_verdict``.
"""

from __future__ import annotations

import argparse
import logging

from pydantic import ConfigDict, Field

from so8t.ab.runner import ABConfig


class ABCommandConfig(ABConfig):
    """A/B evaluation of candidate A against baseline B; writes ab_report.json and ab_report.md."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    output_dir: str = Field(description="Where ab_report.json and ab_report.md are written (only after success).")
    fail_on_verdict: bool = Field(False, description="Exit 1 when A fails the non-inferiority verdict (default: exit 0).")

    def ab_config(self) -> ABConfig:
        """The evaluation settings alone."""
        return ABConfig(**self.model_dump(include=set(ABConfig.model_fields)))


def _cmd_ab(args: argparse.Namespace) -> int:
    from so8t.ab.runner import run_ab, write_ab_report
    from so8t.cli import config_values
    from so8t.config import build_config

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer." per scorer
    cfg = build_config(ABCommandConfig, config_values(args, ABCommandConfig))
    from so8t.outpaths import check_output_dir

    check_output_dir(cfg.output_dir, "--output_dir")  # before minutes of generation, not after
    report = run_ab(cfg.ab_config())
    js, md = write_ab_report(report, cfg.output_dir)
    q, s, p = report.quality.overall, report.safety, report.performance
    print(f"BLEU A {q.bleu_a:.2f} / B {q.bleu_b:.2f} (A-B {q.bleu_diff.text('.2f')}); "
          f"ROUGE-L A {q.rouge_l_a:.3f} / B {q.rouge_l_b:.3f} (A-B {q.rouge_l_diff.text('.3f')})")
    print(f"false-allow A {s.a.false_allow_rate:.3f} / B {s.b.false_allow_rate:.3f}; false-deny A "
          f"{s.a.false_deny_rate:.3f} / B {s.b.false_deny_rate:.3f}; macro F1 A {s.a.macro_f1:.3f} / B "
          f"{s.b.macro_f1:.3f}; McNemar p {s.mcnemar.p_value:.3g}")
    print(f"generation tokens/s A {p.a.gen_tokens_per_s or 0:.1f} / B {p.b.gen_tokens_per_s or 0:.1f} "
          f"(ratio {p.throughput_ratio.text('.2f')})")
    print(f"verdict: {'PASS' if report.verdict.passed else 'FAIL'}: {report.verdict.summary}")
    print(f"report: {md} and {js} ({report.seconds['total']:.0f} s)")
    return 1 if cfg.fail_on_verdict and not report.verdict.passed else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ab`` subcommand."""
    from so8t.cli import add_config_flags

    p = sub.add_parser("ab", help="A/B evaluation of two GGUF models: quality, safety, performance, verdict.",
                       description=ABCommandConfig.__doc__)
    add_config_flags(p, ABCommandConfig)
    p.set_defaults(handler=_cmd_ab)
