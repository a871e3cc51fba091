"""Greedy generation with timings, and performance summaries, for the A/B evaluation.

:class:`GreedyGenerator` opens a GGUF with llama-cpp-python, renders an instruction with the chat
template stored in the GGUF (the same sandboxed renderer as :mod:`so8t.calibrate.scoring`), evaluates the
prompt, and picks the argmax token until the model emits an end-of-generation token (its own
end-of-turn, ``llama_vocab_is_eog``) or ``max_new_tokens`` is reached. Greedy decoding makes the
outputs deterministic; the seed is recorded and passed to llama.cpp all the same.

Timings of one generation (``time.perf_counter``):

- ``prompt_seconds``: tokenising plus evaluating the prompt;
- ``ttft_seconds``: until the first generated token is known (prompt + one argmax);
- ``decode_seconds``: from there to the end (``decode_steps`` single-token evaluations);
- ``total_seconds``: the whole request.

Peak memory is measured in a fresh subprocess (``python -m so8t.ab.perf MODEL``): the growth of
its peak resident set size (Linux ``VmHWM``) from just before loading the model to after a short
generation. Memory-mapped weights count once touched.

Threads: ggml's worker threads spin while waiting, so more threads than free cores slows a model
down several-fold (measured here: 45 vs 5 tokens/s with 1 vs 2 threads on a busy 2-core machine).
``n_threads=0`` therefore means half the CPU cores, at least one, for prompts and decoding alike
(:func:`so8t.llama.thread_counts`, the loader's ``"half"`` default).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from so8t.chat_template import render_chat
from so8t.errors import DataError, ModelError
from so8t.llama import VocabOnly, next_token_logits, open_llama, special_token_text, template_token_ids, thread_counts

logger = logging.getLogger(__name__)


def resolve_threads(n_threads: int) -> int:
    """``n_threads`` if positive, else half the cores, at least 1 (:func:`so8t.llama.thread_counts`, ``"half"``)."""
    return thread_counts(n_threads, "half")[0]


@dataclass(frozen=True)
class Generation:
    """One greedy generation and its timings."""

    text: str
    prompt_tokens: int
    new_tokens: int
    decode_steps: int
    stopped: Literal["eog", "length"]
    prompt_seconds: float
    ttft_seconds: float
    decode_seconds: float
    total_seconds: float


class GreedyGenerator:
    """A loaded GGUF that answers instructions greedily (use as a context manager, or ``close()``).

    Args:
        path: The ``.gguf`` file (checked by the caller with :func:`so8t.calibrate.scoring.check_gguf`).
        n_ctx: Context size; prompt plus ``max_new_tokens`` must fit.
        n_threads: CPU threads (see :func:`resolve_threads`).
        seed: llama.cpp seed (greedy decoding does not sample; recorded for completeness).

    Raises:
        ModelError: llama.cpp cannot load the file, or it has no chat template.
    """

    def __init__(self, path: str | Path, n_ctx: int, n_threads: int, seed: int = 0):
        import llama_cpp

        self.path = Path(path)
        t0 = time.perf_counter()
        self.llm = open_llama(self.path, n_ctx, n_threads=n_threads, seed=seed)  # 512-token batches, "half" threads
        self.load_seconds = time.perf_counter() - t0
        self.template = (self.llm.metadata or {}).get("tokenizer.chat_template")
        if not self.template:
            self.close()
            raise ModelError(f"{self.path}: the GGUF has no tokenizer.chat_template in its metadata: generations "
                             "use the model's chat template; convert the model with its tokenizer_config.json")
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self.bos_text = special_token_text(self.llm, self.llm.token_bos())
        self.eos_text = special_token_text(self.llm, self.llm.token_eos())
        self.n_ctx = n_ctx

    def __enter__(self) -> GreedyGenerator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Free the model (``Llama.__del__`` at interpreter exit can raise; close explicitly)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None

    def prompt_ids(self, instruction: str) -> list[int]:
        """Tokens of the chat-templated prompt (a BOS printed by the template is not doubled)."""
        return instruction_ids(self.llm, self.template, self.bos_text, self.eos_text, instruction)

    def check_fits(self, instructions: list[str], max_new_tokens: int) -> None:
        """Raise before any generation when a prompt plus ``max_new_tokens`` exceeds ``n_ctx``.

        Raises:
            DataError: Names the first offending item and the fix.
        """
        _check_fits(self.prompt_ids, instructions, max_new_tokens, self.n_ctx)

    def _argmax(self) -> int:
        # a view, not a copy: this runs once per generated token, inside the timings
        return int(np.argmax(next_token_logits(self.llm, copy=False)))  # ties: lowest token id

    def generate(self, instruction: str, max_new_tokens: int) -> Generation:
        """Greedy answer to one instruction, with timings."""
        t0 = time.perf_counter()
        ids = self.prompt_ids(instruction)
        self.llm.reset()  # n_tokens = 0: the next eval overwrites the KV cache from position 0
        self.llm.eval(ids)
        t_prompt = time.perf_counter()
        tok = self._argmax()
        t_first = time.perf_counter()
        out: list[int] = []
        steps = 0
        stopped: Literal["eog", "length"] = "length"
        while True:
            if self._is_eog(self._vocab, tok):
                stopped = "eog"
                break
            out.append(tok)
            if len(out) >= max_new_tokens:
                break
            self.llm.eval([tok])
            steps += 1
            tok = self._argmax()
        t_end = time.perf_counter()
        text = self.llm.detokenize(out).decode("utf-8", errors="replace") if out else ""
        return Generation(text=text.strip(), prompt_tokens=len(ids), new_tokens=len(out), decode_steps=steps,
                          stopped=stopped, prompt_seconds=t_prompt - t0, ttft_seconds=t_first - t0,
                          decode_seconds=t_end - t_first, total_seconds=t_end - t0)


def instruction_ids(llm: Any, template: str, bos_text: str, eos_text: str, instruction: str) -> list[int]:
    """Tokens of one instruction in the chat template (``llm``: a loaded model or :class:`so8t.llama.VocabOnly`)."""
    prompt = render_chat(template, [{"role": "user", "content": instruction}], bos_token=bos_text, eos_token=eos_text)
    return template_token_ids(llm, prompt, bos_text)


def _check_fits(prompt_ids: Any, instructions: list[str], max_new_tokens: int, n_ctx: int) -> None:
    for i, text in enumerate(instructions):
        n = len(prompt_ids(text))
        if n + max_new_tokens > n_ctx:
            raise DataError(f"quality item {i + 1} ({text[:40]!r}) has {n} prompt tokens + max_new_tokens="
                            f"{max_new_tokens} > n_ctx={n_ctx}: raise n_ctx or lower max_new_tokens")


def check_fits(path: str | Path, instructions: list[str], max_new_tokens: int, n_ctx: int) -> None:
    """:meth:`GreedyGenerator.check_fits` with llama.cpp's vocabulary alone (no weights loaded): the sharded run's check.

    Raises:
        ModelError: No chat template in the GGUF.
        DataError: A prompt plus ``max_new_tokens`` longer than ``n_ctx``.
    """
    with VocabOnly(path) as v:
        template = v.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{path}: the GGUF has no tokenizer.chat_template in its metadata: generations use the "
                             "model's chat template; convert the model with its tokenizer_config.json")
        bos, eos = special_token_text(v, v.token_bos()), special_token_text(v, v.token_eos())
        _check_fits(lambda t: instruction_ids(v, template, bos, eos, t), instructions, max_new_tokens, n_ctx)


# ----------------------------------------------------------------------------- A and B, interleaved, in shards
def generate_pairs(ga: GreedyGenerator, gb: GreedyGenerator, instructions: Sequence[str], max_new_tokens: int, *,
                   offset: int = 0, progress: bool | None = None) -> list[tuple[Generation, Generation]]:
    """Greedy answers of A and B to each instruction, interleaved, after one untimed warm-up each.

    The order alternates with the item's index in the whole set (``offset + i``: A first on even items), so that
    load on a shared machine hits both alike; the sequential run and every shard run this same loop.
    """
    from tqdm.auto import tqdm

    for g in (ga, gb):  # warm-up: first-call costs (page faults, thread start) are not measured
        g.generate(instructions[0], min(4, max_new_tokens))
    out: list[tuple[Generation, Generation]] = []
    for i, text in enumerate(tqdm(instructions, desc="A/B generations", unit="item",
                                  disable=(not progress) if progress is not None else None)):
        if (offset + i) % 2 == 0:
            a = ga.generate(text, max_new_tokens)
            b = gb.generate(text, max_new_tokens)
        else:
            b = gb.generate(text, max_new_tokens)
            a = ga.generate(text, max_new_tokens)
        out.append((a, b))
    return out


@dataclass(frozen=True)
class GenerationShard:
    """One contiguous shard of the A/B generations, complete in itself (sent to a worker as it is)."""

    model_a: str
    model_b: str
    n_ctx: int
    n_threads: int
    seed: int
    start: int
    instructions: tuple[str, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class GenerationShardResult:
    """What a worker sends back: the shard's (A, B) generations, both models' load times, where it ran."""

    pairs: list[tuple[Generation, Generation]]
    load_seconds: tuple[float, float]
    timing: Any  # so8t.shards.ShardTiming


def generate_shard(shard: GenerationShard) -> GenerationShardResult:
    """Open A and B on this worker (``n_threads`` each, 0: the worker's count) and run :func:`generate_pairs`."""
    from so8t.shards import ShardTiming, where, worker_threads

    threads = worker_threads(shard.n_threads)
    t0 = time.perf_counter()
    with GreedyGenerator(shard.model_a, shard.n_ctx, threads, shard.seed) as ga, \
            GreedyGenerator(shard.model_b, shard.n_ctx, threads, shard.seed) as gb:
        t1 = time.perf_counter()
        pairs = generate_pairs(ga, gb, list(shard.instructions), shard.max_new_tokens, offset=shard.start,
                               progress=False)
        loads = (ga.load_seconds, gb.load_seconds)
    timing = ShardTiming(start=shard.start, stop=shard.start + len(shard.instructions), worker=where(), threads=threads,
                         load_seconds=t1 - t0, work_seconds=time.perf_counter() - t1)
    return GenerationShardResult(pairs=pairs, load_seconds=loads, timing=timing)


def generate_sharded(executor: Any, model_a: str, model_b: str, instructions: Sequence[str], max_new_tokens: int, *,
                     n_ctx: int, n_threads: int, seed: int) -> tuple[list[tuple[Generation, Generation]],
                                                                    list[GenerationShardResult]]:
    """The A/B generations in contiguous shards on ``executor``'s workers (:mod:`so8t.shards`), merged in order."""
    from so8t.shards import merge_in_order, shard_ranges

    shards = [GenerationShard(model_a=str(model_a), model_b=str(model_b), n_ctx=n_ctx, n_threads=n_threads, seed=seed,
                              start=a, instructions=tuple(instructions[a:b]), max_new_tokens=max_new_tokens)
              for a, b in shard_ranges(len(instructions), executor.workers)]
    names = [f"A/B generation shard {i + 1}/{len(shards)} (quality items {s.start + 1}-{s.start + len(s.instructions)})"
             for i, s in enumerate(shards)]
    parts = executor.map(generate_shard, shards, names)
    pairs = merge_in_order([(p.timing.start, p.pairs) for p in parts], len(instructions))
    return pairs, parts


# ----------------------------------------------------------------------------- summaries
class PerfStats(BaseModel):
    """Performance of one model over the quality set's generations (after one warm-up)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_requests: int = Field(description="Timed generations.")
    prompt_tokens: int = Field(description="Prompt tokens evaluated in all requests.")
    new_tokens: int = Field(description="Tokens generated in all requests (end-of-turn not counted).")
    prompt_tokens_per_s: float = Field(description="Prompt tokens / prompt-evaluation seconds, summed over requests.")
    gen_tokens_per_s: float | None = Field(description="Single-token decode steps / decode seconds (None if no step).")
    ttft_p50_s: float = Field(description="Median time to first token (tokenise + prompt eval + first argmax).")
    ttft_p95_s: float = Field(description="95th percentile of the time to first token.")
    latency_p50_s: float = Field(description="Median total latency of a request.")
    latency_p95_s: float = Field(description="95th percentile of the total latency.")
    mean_new_tokens: float = Field(description="Mean generated tokens per request.")
    stopped_at_eog: int = Field(description="Requests that ended with the model's end-of-turn (the rest hit max_new_tokens).")
    load_seconds: float = Field(description="Seconds llama.cpp took to open the model.")
    file_size_bytes: int = Field(description="Size of the GGUF file.")
    peak_rss_delta_bytes: int | None = Field(description="Peak RSS growth of a fresh process loading the model and "
                                                         "generating a few tokens (None if not measured).")


def throughput(gens: list[Generation]) -> float | None:
    """Generation tokens/s: decode steps over decode seconds, summed (None without any step)."""
    steps = sum(g.decode_steps for g in gens)
    secs = sum(g.decode_seconds for g in gens)
    return steps / secs if steps and secs > 0 else None


def summarize(gens: list[Generation], load_seconds: float, file_size: int, peak_rss_delta: int | None) -> PerfStats:
    """Aggregate timings (percentiles: ``numpy.percentile``, linear interpolation)."""
    if not gens:
        raise DataError("no generations to summarise: the quality set is empty")
    ttft = np.array([g.ttft_seconds for g in gens])
    lat = np.array([g.total_seconds for g in gens])
    p_tok = sum(g.prompt_tokens for g in gens)
    p_sec = sum(g.prompt_seconds for g in gens)
    return PerfStats(
        n_requests=len(gens), prompt_tokens=p_tok, new_tokens=sum(g.new_tokens for g in gens),
        prompt_tokens_per_s=p_tok / p_sec if p_sec > 0 else float("nan"), gen_tokens_per_s=throughput(gens),
        ttft_p50_s=float(np.percentile(ttft, 50)), ttft_p95_s=float(np.percentile(ttft, 95)),
        latency_p50_s=float(np.percentile(lat, 50)), latency_p95_s=float(np.percentile(lat, 95)),
        mean_new_tokens=float(np.mean([g.new_tokens for g in gens])),
        stopped_at_eog=sum(g.stopped == "eog" for g in gens), load_seconds=load_seconds,
        file_size_bytes=file_size, peak_rss_delta_bytes=peak_rss_delta,
    )


# ----------------------------------------------------------------------------- peak memory
_PROBE_INSTRUCTION = "Say hello."
_PROBE_TOKENS = 8


def measure_peak_rss(path: str | Path, n_ctx: int, n_threads: int, timeout_s: float = 300.0) -> int | None:
    """Peak RSS growth (bytes) of a subprocess that loads ``path`` and generates a few tokens.

    Returns:
        Bytes, or None where ``resource`` is unavailable (Windows) or the probe failed (logged).
    """
    cmd = [sys.executable, "-m", "so8t.ab.perf", str(path), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("peak-memory probe of %s failed: %s", path, e)
        return None
    if res.returncode != 0:
        logger.warning("peak-memory probe of %s exited %d: %s", path, res.returncode, res.stderr.strip()[-500:])
        return None
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_delta_bytes"]
    except (ValueError, KeyError, IndexError):
        logger.warning("peak-memory probe of %s printed no result: %r", path, res.stdout[-200:])
        return None


def _peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far.

    Linux: ``VmHWM`` of ``/proc/self/status`` (per address space, so it starts afresh at exec;
    ``ru_maxrss`` would inherit the parent's peak across fork + exec). Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _probe_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m so8t.ab.perf", description="Peak-RSS probe of one GGUF.")
    ap.add_argument("model")
    ap.add_argument("--n_ctx", type=int, default=2048)
    ap.add_argument("--n_threads", type=int, default=0)
    args = ap.parse_args(argv)
    import llama_cpp  # noqa: F401  (imported before the baseline so its own pages do not count)

    before = _peak_rss_bytes()
    with GreedyGenerator(args.model, args.n_ctx, args.n_threads) as g:
        g.generate(_PROBE_INSTRUCTION, _PROBE_TOKENS)
        after = _peak_rss_bytes()
    delta = None if before is None or after is None else after - before
    print(json.dumps({"peak_rss_delta_bytes": delta, "peak_rss_bytes": after}))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
