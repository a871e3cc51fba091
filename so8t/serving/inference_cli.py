"""``so8t run`` (llama.cpp-style generation from a GGUF) and ``so8t modelfile`` (Ollama Modelfile)."""

from __future__ import annotations

import argparse
import sys

from so8t.errors import ConfigError


def bounded(kind: type, lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a finite ``kind`` within [lo, hi] (or (lo, hi] with ``lo_open``); NaN and inf refused."""
    import argparse
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if lo_open else '>='} {lo:g}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{text} must be <= {hi:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` and ``modelfile`` subcommands."""
    p = subparsers.add_parser(
        "run",
        help="Generate from a GGUF with llama.cpp, streaming to stdout (runbook: llama.cpp/main -m ... -n 1024 -t 8).",
        description="Generate with llama.cpp (through llama-cpp-python) from a GGUF file. The prompt is wrapped in the "
                    "chat template stored in the GGUF unless --raw; the answer streams to stdout, logs go to stderr.",
    )
    p.add_argument("-m", "--model", required=True, metavar="GGUF", help="The GGUF file (e.g. out/so8t_baked_Q5_K_M.gguf).")
    p.add_argument("-p", "--prompt", default=None, help="The user's message (with --raw: the whole prompt). Default: read stdin.")
    p.add_argument("-n", "--n_predict", type=bounded(int, lo=1), default=1024, help="Most tokens to generate; stops earlier at end-of-turn (default: 1024).")
    p.add_argument("-t", "--threads", type=bounded(int, lo=0), default=0, help="CPU threads (default: 0 = all cores).")
    p.add_argument("--temp", type=bounded(float, lo=0.0), default=0.7, help="Sampling temperature; 0 is greedy (default: 0.7).")
    p.add_argument("--repeat_penalty", type=bounded(float, lo=0.0, lo_open=True), default=1.1, help="Penalty for repeated tokens; 1.0 disables it (default: 1.1).")
    p.add_argument("--top_k", type=bounded(int, lo=0), default=40, help="Top-k sampling (default: 40, as llama.cpp).")
    p.add_argument("--top_p", type=bounded(float, lo=0.0, hi=1.0, lo_open=True), default=0.95, help="Nucleus sampling threshold (default: 0.95, as llama.cpp).")
    p.add_argument("--seed", type=int, default=None, help="Sampling seed for reproducible output (default: random).")
    p.add_argument("-s", "--system", default=None, help="Optional system message (ignored with --raw).")
    p.add_argument("--raw", action="store_true", help="Do not apply the chat template: send the prompt as is (BOS added by llama.cpp).")
    p.add_argument("-c", "--ctx_size", type=bounded(int, lo=0), default=0,
                   help="Context size in tokens (default: 0 = prompt + n_predict, capped at the model's training context).")
    p.set_defaults(handler=_cmd_run)

    m = subparsers.add_parser(
        "modelfile",
        help="Write an Ollama Modelfile for a GGUF (TEMPLATE from its chat template, calibrated temperature).",
        description="Write an Ollama Modelfile: FROM the GGUF, TEMPLATE translated from the chat template in the GGUF "
                    "metadata (ChatML, Phi-3, Llama-3, Zephyr-style; checked to render exactly like the original), SYSTEM "
                    "when the template has a default system message, PARAMETER temperature (from --calibration, else 0.7), "
                    "top_p 0.9, top_k 40, num_ctx 4096 and stop for the end-of-turn token.",
    )
    m.add_argument("--model", required=True, metavar="GGUF", help="The GGUF file the Modelfile points at.")
    m.add_argument("--calibration", default=None, metavar="JSON",
                   help="calibration_results.json from so8t calibrate: its top-level 'temperature' becomes PARAMETER temperature.")
    m.add_argument("--output", default="Modelfile", help="Where to write the Modelfile; '-' prints it (default: ./Modelfile).")
    m.set_defaults(handler=_cmd_modelfile)


def _utf8(raw: bytes, where: str) -> str:
    """``raw`` as text; a prompt that is not UTF-8 is refused in one line (llama.cpp tokenises UTF-8)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1}): "
                          "convert the prompt to UTF-8") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from so8t.serving.inference import generate

    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise ConfigError("no prompt: pass -p PROMPT or pipe the prompt on stdin")
        prompt = _utf8(sys.stdin.buffer.read(), "stdin")
    else:
        prompt = _utf8(prompt.encode("utf-8", "surrogateescape"), "-p/--prompt")
    if args.system is not None:
        args.system = _utf8(args.system.encode("utf-8", "surrogateescape"), "-s/--system")
    pieces = generate(args.model, prompt, n_predict=args.n_predict, threads=args.threads, temperature=args.temp,
                      repeat_penalty=args.repeat_penalty, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      raw=args.raw, system=args.system, n_ctx=args.ctx_size)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _cmd_modelfile(args: argparse.Namespace) -> int:
    from so8t.serving.inference import build_modelfile, write_modelfile

    if args.output == "-":
        sys.stdout.write(build_modelfile(args.model, calibration=args.calibration))
        return 0
    out = write_modelfile(args.model, args.output, calibration=args.calibration)
    print(out)
    return 0
