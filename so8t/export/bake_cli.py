"""``so8t bake``: merge LoRA and fold the SO(8) rotations into o_proj (runbook: bakein_o_proj.py)."""

from __future__ import annotations

import argparse


def _cmd_bake(args: argparse.Namespace) -> int:
    from so8t.export.bake import BakeConfig, bake
    from so8t.cli import config_values
    from so8t.config import build_config

    cfg = build_config(BakeConfig, config_values(args, BakeConfig))
    report = bake(cfg)
    print(
        f"baked {len(report.layers_folded)} layer(s) into {report.output_path}: max |delta logit| "
        f"{report.max_abs_logit_delta:.2e}, mean KL {report.mean_kl:.2e}, top-1 agreement {report.top1_agreement:.4f}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bake`` subcommand."""
    from so8t.export.bake import BakeConfig
    from so8t.cli import add_config_flags

    p = sub.add_parser("bake", help="Bake LoRA + SO8T rotations into a plain model (runbook: bakein_o_proj.py).",
                       description=BakeConfig.__doc__)
    add_config_flags(p, BakeConfig)
    p.set_defaults(handler=_cmd_bake)
