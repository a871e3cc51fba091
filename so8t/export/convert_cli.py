"""``so8t convert MODEL_DIR OUT_DIR [QUANT ...]``: HF model -> F16 GGUF -> quantized GGUFs + report."""

from __future__ import annotations

import argparse

from so8t.export.gguf import ConvertConfig

_F = ConvertConfig.model_fields


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    p = subparsers.add_parser(
        "convert",
        help="Convert a HF model to GGUF (llama.cpp's converter) and quantize it (runbook: convert_and_quantize.sh).",
        description=(
            "Convert MODEL_DIR to OUT_DIR/{name}_f16.gguf with llama.cpp's own convert_hf_to_gguf.py, quantize it to "
            "OUT_DIR/{name}_{QUANT}.gguf through llama.cpp's C API, verify every file (tensor types, fallbacks, fidelity "
            "against the HF model) and write OUT_DIR/gguf_report.json. Verified outputs of the same input are reused."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help=_F["model_dir"].description)
    p.add_argument("out_dir", metavar="OUT_DIR", help=_F["out_dir"].description)
    p.add_argument("quants", metavar="QUANT", nargs="*", default=["Q5_K_M"],
                   help="llama.cpp quantization types by name, e.g. Q4_K_M Q5_K_M Q8_0 (default: Q5_K_M). F16 is always made.")
    p.add_argument("--name", default=None, help=_F["name"].description)
    p.add_argument("--llama_cpp_dir", default=None, help=_F["llama_cpp_dir"].description)
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="Print the plan (what is built, what is reused and why) and exit; writes nothing.")
    p.add_argument("--no_fidelity", action="store_true", help="Skip the fidelity comparison with the HF model (faster; no F16 gate).")
    p.add_argument("--probe", action="append", default=None, metavar="TEXT",
                   help="A plain-text probe prompt for the fidelity check (repeatable; default: built-in probes).")
    p.add_argument("--max_f16_kl", type=float, default=_F["max_f16_kl"].default,
                   help=f"{_F['max_f16_kl'].description} (default: {_F['max_f16_kl'].default})")
    p.add_argument("--threads", type=int, default=0, help=_F["threads"].description)
    p.add_argument("--force", action="store_true", help=_F["force"].description)
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=_F["verbose"].description)
    p.set_defaults(handler=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from so8t.config import build_config
    from so8t.export.gguf import plan_conversion, run_conversion

    cfg = build_config(ConvertConfig, {
        "model_dir": args.model_dir, "out_dir": args.out_dir, "quants": tuple(args.quants), "name": args.name,
        "llama_cpp_dir": args.llama_cpp_dir, "fidelity": not args.no_fidelity,
        "probes": tuple(args.probe) if args.probe else None, "max_f16_kl": args.max_f16_kl,
        "threads": args.threads, "force": args.force, "verbose": bool(getattr(args, "verbose", False)),
    })
    if args.dry_run:
        print(plan_conversion(cfg).describe())
        return 0
    result = run_conversion(cfg)
    for f in result.files:
        line = f"{result.out_dir}/{f.file}\t{f.size_bytes / 1e6:.1f} MB\tfallbacks {f.fallback_count}"
        if f.fidelity:
            line += f"\tKL {f.fidelity.mean_kl:.2e}\ttop-1 {f.fidelity.top1_agreement:.3f}"
        print(line + ("\t(reused)" if f.reused else ""))
    print(f"report: {result.report_path}")
    return 0
