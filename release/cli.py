"""``so8t release ...``: the release recipes from the command line, without Prefect.

    so8t release pipeline  [--params FILE.json] [--name N] [--registry_root DIR] [--work_dir DIR]
    so8t release retrain   [...]       so8t release calibrate [--version vN] [...]
    so8t release rollback  [--to vN] [--reason TEXT] [...]

Each runs :mod:`release.recipes` with the plain :class:`release.stages.Stages`: the same stages, order,
gate and rollback rules as the Prefect flows, none of Prefect's runs, caches or artifacts. ``--params``
is a JSON file of the flow's parameters (the same model the Prefect UI shows as a form; missing fields
take the flow's defaults); the flags override its common fields. The result is printed as JSON.

This module is also the ``so8t`` console script's entry point: ``so8t release ...`` is handled here and
every other command is handed to :func:`so8t.cli.main`, so the library never imports this layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RECIPES = ("pipeline", "retrain", "calibrate", "rollback")


def main(argv: list[str] | None = None) -> int:
    """The ``so8t`` console script: ``release ...`` here, everything else in :func:`so8t.cli.main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["release"]:
        return release_main(argv[1:])
    from so8t.cli import main as so8t_main

    return so8t_main(argv)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="so8t release", description="The release recipes without Prefect: the same stages, "
                                 "order, gate and rollback rules as the Prefect flows (docs/architecture.md).")
    sub = ap.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    helps = {"pipeline": "Train, bake, convert, quantize, publish, calibrate, A/B, gate, promote (so8t-pipeline).",
             "retrain": "Train, bake, convert, quantize and publish a candidate (so8t-retrain).",
             "calibrate": "Calibrate a candidate (or production), gate it, promote with smoke test "
                          "(so8t-calibrate-and-promote).",
             "rollback": "Move production back to the previous or a given version (so8t-rollback)."}
    for name in RECIPES:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("--params", type=Path, help="JSON file of the recipe's parameters (the flow's; missing fields "
                                                   "take its defaults).")
        p.add_argument("--name", help="Registry model name (params model.name).")
        p.add_argument("--registry_root", help="Registry root (params model.registry_root).")
        if name != "rollback":
            p.add_argument("--work_dir", help="Where stage outputs go (params work_dir).")
        if name == "calibrate":
            p.add_argument("--version", help="Version to calibrate: vN, or 'production' to re-calibrate it "
                                             "(default: the newest candidate awaiting calibration).")
        if name == "rollback":
            p.add_argument("--to", help="Version to restore (default: the previous production).")
            p.add_argument("--reason", help="Why (recorded in the history).")
    return ap


def _params(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from release.params import CalibrateAndPromoteParams, PipelineParams, RetrainParams, RollbackParams
    from so8t.errors import ConfigError
    from so8t.jsonfile import read_json_object

    cls = {"pipeline": PipelineParams, "retrain": RetrainParams, "calibrate": CalibrateAndPromoteParams,
           "rollback": RollbackParams}[args.recipe]
    doc: dict[str, Any] = {}
    if args.params is not None:
        doc = read_json_object(args.params, "parameters file", hint=f" (a JSON object of {cls.__name__} fields)")
    model = dict(doc.get("model") or {})
    model.update({k: v for k, v in (("name", args.name), ("registry_root", args.registry_root)) if v is not None})
    if model:
        doc["model"] = model
    for key in ("work_dir", "version", "to", "reason"):
        if getattr(args, key, None) is not None:
            doc[key] = getattr(args, key)
    try:
        return cls(**doc)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "params"
        raise ConfigError(f"{args.params or 'flags'}: {cls.__name__} field '{where}': {err['msg']}") from None


def release_main(argv: list[str]) -> int:
    from so8t.cli import setup_logging
    from so8t.errors import So8tError

    args = build_parser().parse_args(argv)
    setup_logging(f"release-{args.recipe}", False)
    try:
        params = _params(args)
        out = run(args.recipe, params)
    except So8tError as e:
        print(f"so8t release: error: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:  # GateFailed, PromotionFailed, SmokeTestFailed: the release said no
        from release.recipes import GateFailed, PromotionFailed

        if not isinstance(e, (GateFailed, PromotionFailed)):
            raise
        print(f"so8t release: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


def run(recipe: str, params: Any) -> Any:
    """Run one recipe with the plain stages; returns its summary as JSON-able data."""
    from release import recipes
    from release.stages import Stages

    fn = {"pipeline": recipes.run_pipeline, "retrain": recipes.build_candidate,
          "calibrate": recipes.calibrate_gate_promote, "rollback": recipes.rollback}[recipe]
    result = fn(params, Stages())
    return None if result is None else result.model_dump(mode="json")


if __name__ == "__main__":
    raise SystemExit(main())
