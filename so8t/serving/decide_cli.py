"""``so8t decide``: the calibrated ALLOW / ESCALATE / DENY decision for requests, from the command line.

One request (an argument, or stdin) prints its decision, the calibrated probabilities, the thresholds
and the model (``--json``: all of it as JSON); ``--input FILE.jsonl`` decides every ``{"text"}``
record and writes one JSON line per record (``--output``, atomically; default stdout). Bad input is
one line ``so8t: error: ...`` and exit 2, checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys

from so8t.errors import ConfigError


def _text_argument(args: argparse.Namespace) -> str:
    from so8t.serving.inference_cli import _utf8

    if args.text is not None:
        return _utf8(args.text.encode("utf-8", "surrogateescape"), "TEXT")
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("no request: pass TEXT, pipe it on stdin, or pass --input FILE.jsonl")
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    return _utf8(raw, "stdin").rstrip("\n")


def _cmd_decide(args: argparse.Namespace) -> int:
    from so8t.atomic import atomic_write_text
    from so8t.serving.decide import Decider, check_text, read_requests
    from so8t.outpaths import check_output_file

    if args.input is not None and args.text is not None:
        raise ConfigError("pass either TEXT or --input FILE.jsonl, not both")
    if args.output is not None and args.input is None:
        raise ConfigError("--output is for --input FILE.jsonl (one decision per record); one request prints")
    if args.input is not None:
        requests = read_requests(args.input)
        out = check_output_file(args.output, "--output") if args.output not in (None, "-") else None
    else:
        text = check_text(_text_argument(args), "TEXT" if args.text is not None else "stdin")
    with Decider(args.model, args.calibration, args.decision_prompt, args.registry_root, n_ctx=args.n_ctx,
                 n_threads=args.n_threads, allow_other_model=args.allow_other_model) as decider:
        info = decider.info.model_dump(mode="json")
        thresholds = decider.thresholds.model_dump()
        if args.input is None:
            d = decider.decide_one(text, "TEXT" if args.text is not None else "stdin")
            if args.json:
                print(json.dumps({**d.model_dump(), "thresholds": thresholds, "model": info,
                                  "decision_rule": decider.decision_rule}, ensure_ascii=False))
            else:
                probs = "  ".join(f"p({k})={v:.3f}" for k, v in d.probabilities.items())
                served = f"{info['registry']['name']} {info['registry']['version']}" if info["registry"] else info["gguf"]
                print(f"{d.decision}  {probs}  [{served}; T {thresholds['temperature']:.4g}, tau_deny "
                      f"{thresholds['tau_deny']:.4g}, tau_escalate {thresholds['tau_escalate']:.4g}; "
                      f"{d.latency_ms:.0f} ms]")
            return 0
        from tqdm.auto import tqdm

        lines = []
        for lineno, rec in tqdm(requests, desc="deciding", unit="request", disable=None, file=sys.stderr):
            d = decider.decide_one(rec["text"], f"{args.input}:{lineno}")
            row = {"line": lineno, **({"id": rec["id"]} if "id" in rec else {}), **d.model_dump()}
            lines.append(json.dumps(row, ensure_ascii=False))
        header = {"model": info, "thresholds": thresholds, "decision_rule": decider.decision_rule,
                  "records": len(lines)}
    body = "\n".join(lines) + "\n"
    if out is None:
        sys.stdout.write(body)
    else:
        atomic_write_text(out, body)
        print(f"decided {header['records']} request(s) with {info['argument']} -> {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``decide`` subcommand."""
    p = sub.add_parser(
        "decide", help="ALLOW / ESCALATE / DENY for requests with a calibrated GGUF (file or registry NAME@REF).",
        description="Decide requests with a calibrated model: p = softmax(z / T) over the label scores of the "
                    "decision prompt (the scorer so8t calibrate uses); DENY if p_DENY >= tau_deny, else ALLOW if "
                    "p_ALLOW >= tau_escalate, else ESCALATE. One request from TEXT or stdin, or every record of "
                    "--input. Exit 0 on success, 2 on bad input.",
    )
    p.add_argument("text", nargs="?", default=None, metavar="TEXT",
                   help="The request to decide (default: read stdin). Leave out with --input.")
    p.add_argument("--model", required=True,
                   help="A GGUF file, or a registry reference NAME@REF (REF an alias such as production, or a version "
                        "such as v3): the version's served GGUF, calibration and decision prompt.")
    p.add_argument("--calibration", default=None,
                   help="calibration_results.json of so8t calibrate (default: the registry version's, else the one "
                        "beside the GGUF).")
    p.add_argument("--decision_prompt", default=None,
                   help="decision_prompt.json the model was trained with (default: the registry version's, else the "
                        "one beside the GGUF, else the built-in prompt).")
    p.add_argument("--registry_root", default=None,
                   help="Registry root for NAME@REF (default: $SO8T_REGISTRY, else ~/.cache/so8t/registry).")
    p.add_argument("--input", default=None, metavar="JSONL",
                   help="Decide every record of this JSONL file ({\"text\"} with an optional \"id\"; other fields "
                        "ignored): one JSON line per record, in file order.")
    p.add_argument("--output", default=None, metavar="JSONL",
                   help="With --input: write the decisions here (atomically) instead of stdout ('-': stdout).")
    p.add_argument("--json", action="store_true", help="One request: print the whole answer as one JSON object.")
    p.add_argument("--n_ctx", type=int, default=2048, help="llama.cpp context; a longer request is refused (default: 2048).")
    p.add_argument("--n_threads", type=int, default=0, help="CPU threads for llama.cpp (default 0: half the logical cores).")
    p.add_argument("--allow_other_model", action="store_true",
                   help="Accept a calibration fitted on another GGUF (its digest differs): a warning instead of an "
                        "error. Its thresholds may not fit this model.")
    p.set_defaults(handler=_cmd_decide)
