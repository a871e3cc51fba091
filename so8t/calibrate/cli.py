"""``so8t calibrate``: score a GGUF on labelled validation data, calibrate, write the results.

The command line of the calibration stage (:mod:`so8t.calibrate.stage`: scoring, fit, files); the runbook's
``calibrate_aed.py`` maps onto it flag for flag (``scripts/training/calibrate_aed.py`` is a shim).
"""

from __future__ import annotations

import argparse
from typing import Any

from so8t.calibrate.stage import CalibrateCommandConfig, calibrate_gguf, summary_lines, write_calibration
from so8t.errors import ConfigError


def _parse_bounds(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"--temperature_bounds {value!r}: expected two numbers 'low,high', e.g. 0.05,20") from None
    return (lo, hi)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from so8t.cli import config_values
    from so8t.config import build_config

    values = config_values(args, CalibrateCommandConfig)
    values["temperature_bounds"] = _parse_bounds(values["temperature_bounds"])
    cfg = build_config(CalibrateCommandConfig, values)
    outcome = calibrate_gguf(cfg)
    json_path, png_path, npz_path = write_calibration(outcome, cfg.output_dir)
    print("\n".join(summary_lines(outcome)))
    print(f"  wrote {json_path}")
    print(f"        {png_path}")
    print(f"        {npz_path}")
    if not outcome.result.passed:
        if cfg.fail_on_gate:
            print("  exit 1: the calibrated model fails the gate (--fail_on_gate)")
            return 1
        print("  calibration ran; the gate failed (exit 0; pass --fail_on_gate to exit 1 on a failing verdict)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``so8t calibrate``."""
    from so8t.cli import add_config_flags

    p = subparsers.add_parser(
        "calibrate", help="Calibrate ALLOW/ESCALATE/DENY on a GGUF (runbook: calibrate_aed.py).",
        description=(CalibrateCommandConfig.__doc__ or "") + " Writes calibration_results.json, "
                    "reliability_diagram.png and scores.npz; exit 0 when calibration ran (also on a failing "
                    "verdict), 2 on bad input.",
    )
    add_config_flags(p, CalibrateCommandConfig)
    p.set_defaults(handler=_cmd_calibrate)
