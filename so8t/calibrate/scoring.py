"""Scoring a GGUF model on the decision prompt: one label-score vector ``z`` per text.

For each ``{"text", "label"}`` record the decision prompt of :mod:`so8t.decision` is rendered with
the chat template stored in the GGUF (``tokenizer.chat_template``, rendered by a sandboxed jinja2
environment with ``add_generation_prompt=True``), tokenized by llama.cpp's own tokenizer (special
tokens parsed) and evaluated by llama-cpp-python. The label tokens are those the label has right
after the generation prompt (tokenize ``prompt + label`` and keep the tail).

Two modes give ``z`` (columns in :data:`so8t.decision.LABELS` order):

- ``first-token``: the raw next-token logits of each label's first token. Needs the three first
  tokens to be distinct; ``softmax(z)`` is then the model's distribution renormalised over them.
- ``sequence``: the teacher-forced log-probability of each label's full token sequence,
  ``sum_k log p(t_k | prompt, t_<k)``. Used when first tokens collide (``auto``) or on request.

Speed: the longest token prefix shared by every prompt (template and system turn) is evaluated once;
for each sample the KV cache is cut back to that prefix (``llm.n_tokens = P``) and only the rest is
evaluated. Scores are cached under ``cache_root()/scores/<key>.{npz,json}`` (written atomically),
keyed by the model file's sha256, the records' content, the decision prompt, the label spellings,
the mode, the scorer version and the llama-cpp-python version, so re-calibrating does not re-score.

Shards (``executor=``, :mod:`so8t.shards`): the prompts are prepared here with the vocabulary alone
(:class:`so8t.llama.VocabOnly`), split into contiguous shards, and each shard is scored on a worker by
:func:`score_shard` (its own model, the global shared prefix, the same :func:`_score_ids` loop as the
sequential run); the merged ``z`` is bit-identical to the sequential one and goes to the same cache entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from so8t.chat_template import render_chat
from so8t.decision import DEFAULT_DECISION_PROMPT, LABELS, DecisionPrompt
from so8t.digests import sha256_file
from so8t.errors import DataError, ModelError
from so8t.llama import N_BATCH, VocabOnly, next_token_logits, open_llama, special_token_text, template_token_ids
from so8t.logits import log_softmax
from so8t.calibrate.score_cache import cache_key, load_cached, save_cached
from so8t.shards import ShardExecutor, ShardTiming, merge_in_order, shard_ranges, where, worker_threads

logger = logging.getLogger(__name__)

#: Bump when the numbers a given (model, data, prompt, labels, mode) produce would change.
SCORER_VERSION = 1

ScoringMode = Literal["auto", "first-token", "sequence"]
ResolvedMode = Literal["first-token", "sequence"]

GGUF_MAGIC = b"GGUF"
# N_BATCH (so8t.llama), the tokens per llama.cpp decode call, is part of the cache key: batch shape can
# change the last bits of the logits.


@dataclass(frozen=True)
class Scores:
    """Label scores of a dataset under one GGUF model.

    Attributes:
        z: ``(n, 3)`` float64 label scores in ``LABELS`` order (logits or log-probabilities).
        y: ``(n,)`` int64 true label indices.
        label_token_ids: Token ids of each label as it follows the generation prompt.
        mode: ``"first-token"`` or ``"sequence"``.
        chat_template: The jinja chat template used (from the GGUF metadata).
        prompt_example: The first rendered prompt, for reports.
        model_sha256: sha256 of the GGUF file.
        data_sha256: sha256 of the data file when scored from a file, else of the records' content.
        records_sha256: sha256 of the records' canonical JSON (part of the cache key).
        cache_key: Key of the score cache entry.
        from_cache: True when the scores were read from the cache (no model call).
        n_prefix_tokens: Prompt tokens shared by all samples and evaluated once.
        seconds: Wall time of scoring (of the original run when read from the cache).
        scorer_version: :data:`SCORER_VERSION` that produced the scores.
        llama_cpp_version: llama-cpp-python version that produced the scores.
        model_path: The scored GGUF.
    """

    z: np.ndarray
    y: np.ndarray
    label_token_ids: dict[str, list[int]]
    mode: ResolvedMode
    chat_template: str
    prompt_example: str
    model_sha256: str
    data_sha256: str
    records_sha256: str
    cache_key: str
    from_cache: bool
    n_prefix_tokens: int
    seconds: float
    scorer_version: int = SCORER_VERSION
    llama_cpp_version: str = ""
    model_path: str = ""
    label_texts: tuple[str, str, str] = LABELS
    prompt: DecisionPrompt = DEFAULT_DECISION_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """JSON-ready description of how the scores were made (everything but the arrays)."""
        return {
            "mode": self.mode,
            "label_texts": list(self.label_texts),
            "label_token_ids": self.label_token_ids,
            "n_samples": int(self.z.shape[0]),
            "n_prefix_tokens": self.n_prefix_tokens,
            "model_sha256": self.model_sha256,
            "data_sha256": self.data_sha256,
            "records_sha256": self.records_sha256,
            "cache_key": self.cache_key,
            "from_cache": self.from_cache,
            "seconds": self.seconds,
            "scorer_version": self.scorer_version,
            "llama_cpp_version": self.llama_cpp_version,
            "model_path": self.model_path,
            "chat_template": self.chat_template,
            "decision_system": self.prompt.system,
            "decision_user_template": self.prompt.user_template,
            "decision_prompt_sha256": self.prompt.sha256(),
            "prompt_example": self.prompt_example,
        }


# ----------------------------------------------------------------------------- inputs
def check_gguf(path: str | Path) -> Path:
    """Fail early, in one line, on a missing, unreadable or non-GGUF model file.

    Raises:
        ModelError: The path, what is wrong and what to pass instead.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"{p}: model file not found: pass the path of a .gguf file (so8t gguf convert makes one)")
    if not p.is_file():
        raise ModelError(f"{p}: is not a file: pass the path of a .gguf file")
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"{p}: cannot read the model file ({e.strerror}): check its permissions") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{p}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}): "
                         "convert the model with so8t gguf convert first")
    # llama.cpp's vocabulary-only load (~0.1 s) reads the header, metadata and tensor table and checks
    # that the tensor data lies within the file: a truncated or corrupt file fails here, not after setup
    from so8t.llama import open_vocab

    try:
        open_vocab(p).close()
    except ModelError:
        raise ModelError(f"{p}: llama.cpp could not load the model (a truncated or corrupt GGUF?): re-copy it or convert "
                         "the model again") from None
    return p


def records_digest(texts: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 of the records' canonical JSON (independent of file formatting)."""
    h = hashlib.sha256()
    for t, lab in zip(texts, labels, strict=True):
        h.update(json.dumps([t, lab], ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------- model access
def _load_model(path: Path, n_ctx: int, n_threads: int):
    """Open a GGUF for scoring: next-token logits only, :data:`N_BATCH`, seed 0, the ``"half"`` thread default.

    The one place scoring, ``so8t decide`` and ``so8t serve`` load a model (tests replace it here).
    """
    return open_llama(path, n_ctx, n_threads=n_threads, n_batch=N_BATCH, logits_all=False, seed=0)


class _Prompter:
    """Renders and tokenizes decision prompts for one loaded model."""

    def __init__(self, llm, chat_template: str | None, prompt: DecisionPrompt = DEFAULT_DECISION_PROMPT):
        meta = llm.metadata or {}
        template = chat_template or meta.get("tokenizer.chat_template")
        if not template:
            raise ModelError("the GGUF has no tokenizer.chat_template in its metadata: the decision prompt is "
                             "rendered with the model's chat template (training uses the same); convert the model "
                             "with its tokenizer_config.json so the template is embedded")
        self.llm = llm
        self.prompt = prompt
        self.template = template
        self.bos_text = special_token_text(llm, llm.token_bos())
        self.eos_text = special_token_text(llm, llm.token_eos())

    def render(self, text: str) -> str:
        return render_chat(self.template, self.prompt.messages(text), bos_token=self.bos_text, eos_token=self.eos_text)

    def tokenize(self, prompt: str) -> list[int]:
        return template_token_ids(self.llm, prompt, self.bos_text)

    def label_ids(self, prompt: str, prompt_ids: list[int], label: str) -> list[int]:
        """Tokens of ``label`` as they follow the generation prompt."""
        joint = self.tokenize(prompt + label)
        if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
            return joint[len(prompt_ids):]
        alone = self.llm.tokenize(label.encode("utf-8"), add_bos=False, special=True)
        logger.warning("label %r merges with the end of the prompt when tokenized together; "
                       "scoring its stand-alone tokens %s", label, alone)
        return alone


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences, leaving each at least one token."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return min(k, n - 1)


def resolve_mode(label_token_ids: Sequence[Sequence[int]], mode: ScoringMode,
                 label_texts: Sequence[str] = LABELS) -> ResolvedMode:
    """``auto`` -> ``first-token`` when the labels' first tokens are distinct, else ``sequence``.

    Args:
        label_token_ids: Token ids of each label, in ``LABELS`` order.
        mode: The requested mode.
        label_texts: The labels' spellings (for messages).

    Raises:
        ModelError: ``first-token`` requested with colliding first tokens, or two labels with
            identical token sequences (no mode can tell them apart; the message names both labels,
            their spellings and token ids).
    """
    seqs = [tuple(s) for s in label_token_ids]
    if any(len(s) == 0 for s in seqs):
        raise ModelError(f"a label tokenizes to nothing ({dict(zip(LABELS, seqs))}): check the label spellings")
    for a in range(len(seqs)):
        for b in range(a + 1, len(seqs)):
            if seqs[a] == seqs[b]:
                raise ModelError(
                    f"labels {LABELS[a]} ({label_texts[a]!r}) and {LABELS[b]} ({label_texts[b]!r}) have identical "
                    f"token ids {list(seqs[a])} after the prompt: the tokenizer cannot tell them apart, so no "
                    "scoring mode can; spell the labels so that they tokenize differently"
                )
    distinct = len({s[0] for s in seqs}) == len(seqs)
    if mode == "auto":
        return "first-token" if distinct else "sequence"
    if mode == "first-token" and not distinct:
        raise ModelError(f"label first tokens collide ({dict(zip(LABELS, seqs))}): first-token scoring cannot tell "
                         "them apart; use mode 'sequence' or 'auto'")
    if mode not in ("first-token", "sequence"):
        raise ModelError(f"scoring mode {mode!r} is unknown: use 'auto', 'first-token' or 'sequence'")
    return mode


# ----------------------------------------------------------------------------- scoring
def _score_sample(llm, ids: list[int], n_prefix: int, label_ids: list[list[int]], mode: ResolvedMode) -> np.ndarray:
    """Scores of one prompt; the KV cache holds the shared prefix (``n_prefix`` tokens)."""
    llm.n_tokens = n_prefix
    llm.eval(ids[n_prefix:])
    logits = next_token_logits(llm)  # (n_vocab,)
    if mode == "first-token":
        return np.array([logits[t[0]] for t in label_ids], dtype=np.float64)
    n_prompt = len(ids)
    first = log_softmax(logits)
    out = np.empty(len(label_ids), dtype=np.float64)
    for c, toks in enumerate(label_ids):
        total = float(first[toks[0]])
        llm.n_tokens = n_prompt
        for k in range(1, len(toks)):
            llm.eval([toks[k - 1]])  # teacher forcing: feed the label's previous token
            total += float(log_softmax(next_token_logits(llm))[toks[k]])
        out[c] = total
    return out


def score_gguf(
    model_path: str | Path,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    mode: ScoringMode = "auto",
    label_texts: Sequence[str] = LABELS,
    chat_template: str | None = None,
    n_ctx: int = 2048,
    n_threads: int = 0,
    use_cache: bool = True,
    data_sha256: str | None = None,
    progress: bool | None = None,
    prompt: DecisionPrompt | None = None,
    executor: ShardExecutor | None = None,
) -> Scores:
    """Score every text with a GGUF model on the decision prompt.

    Args:
        model_path: The ``.gguf`` file.
        texts: Requests to classify.
        labels: Their true labels (strings from ``LABELS``), same length.
        mode: ``"auto"`` (first-token if the labels' first tokens differ, else sequence),
            ``"first-token"`` or ``"sequence"``.
        label_texts: Spellings of ``LABELS`` as the model is to answer them (column order unchanged).
        chat_template: Override of the GGUF's chat template (normally None).
        n_ctx: Context size; every prompt plus its longest label must fit.
        n_threads: CPU threads for llama.cpp, prompt batches included (0: :func:`so8t.llama.default_threads`).
        use_cache: Read and write the score cache (``cache_root()/scores``).
        data_sha256: Hash reported for the data (the file's sha256); default: the records' digest.
        progress: Show a tqdm bar (None: only on a terminal).
        prompt: The decision prompt the model was trained on (default: the built-in one).
        executor: Score in contiguous shards on these workers (:mod:`so8t.shards`), one llama.cpp
            instance each (``n_threads`` threads, 0: each worker's own count); None: in this process.
            Same scores, same cache entry.

    Returns:
        :class:`Scores`; bit-identical across runs for the same inputs, however many shards.

    Raises:
        ModelError: Missing/invalid model, no chat template, unusable labels.
        DataError: No records, unknown labels, a prompt longer than ``n_ctx``.
    """
    import llama_cpp

    path = check_gguf(model_path)
    y = _check_records(texts, labels, label_texts)
    t0 = time.monotonic()
    model_sha = sha256_file(path)
    rec_sha = records_digest(texts, labels)
    prompt = prompt or DEFAULT_DECISION_PROMPT
    key = cache_key(model_sha, rec_sha, chat_template, label_texts, mode, n_batch=N_BATCH, scorer_version=SCORER_VERSION,
                    prompt=prompt)
    # What a cached and a fresh result share: the inputs' identity, not how the scores were made.
    inputs: dict[str, Any] = dict(y=y, model_sha256=model_sha, data_sha256=data_sha256 or rec_sha, records_sha256=rec_sha,
                                  cache_key=key, model_path=str(path), label_texts=tuple(label_texts), prompt=prompt)
    if use_cache:
        hit = _cached_scores(key, len(texts), inputs)
        if hit is not None:
            return hit

    if executor is None:
        llm = _load_model(path, n_ctx, n_threads)
        try:
            run = _score_texts(llm, texts, mode=mode, label_texts=label_texts, chat_template=chat_template, n_ctx=n_ctx,
                               prompt=prompt, progress=progress, model_name=path.name)
        finally:
            llm.close()
    else:
        run = _score_sharded(executor, path, texts, mode=mode, label_texts=label_texts, chat_template=chat_template,
                             n_ctx=n_ctx, n_threads=n_threads, prompt=prompt)
    if not np.all(np.isfinite(run.z)):
        bad = int(np.flatnonzero(~np.isfinite(run.z).all(axis=1))[0])
        raise ModelError(f"{path}: non-finite scores for record {bad + 1} ({run.z[bad].tolist()}): the model is broken")
    scores = Scores(
        z=run.z, label_token_ids=run.label_token_ids, mode=run.mode, chat_template=run.chat_template,
        prompt_example=run.prompt_example, from_cache=False, n_prefix_tokens=run.n_prefix_tokens,
        seconds=time.monotonic() - t0, llama_cpp_version=llama_cpp.__version__, extra=run.extra, **inputs,
    )
    logger.info("scored %d samples in %.1f s%s", len(texts), scores.seconds,
                f" on {len(run.extra['shards'])} shard(s)" if "shards" in run.extra else "")
    if use_cache:
        save_cached(scores.cache_key, scores.z, scores.y, scores.info())
    return scores


def _check_records(texts: Sequence[str], labels: Sequence[str], label_texts: Sequence[str]) -> np.ndarray:
    """The true label indices ``(n,)``, after checking the records and the label spellings.

    Raises:
        DataError: Texts and labels of different lengths, no records, a blank text, an unknown label.
        ModelError: Not one spelling per label.
    """
    from so8t.calibrate.calibration import encode_labels

    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels: pass one label per text")
    if not texts:
        raise DataError("no records to score: the validation data is empty")
    blank = next((i for i, t in enumerate(texts) if not str(t).strip()), None)
    if blank is not None:
        raise DataError(f"record {blank + 1}: field 'text' is empty or only whitespace: every record needs the "
                        "request to classify")
    if len(label_texts) != len(LABELS):
        raise ModelError(f"label_texts {list(label_texts)} must give one spelling for each of {LABELS}")
    return encode_labels(labels)


def _cached_scores(key: str, n: int, inputs: dict[str, Any]) -> Scores | None:
    """The cached :class:`Scores` under ``key`` (how they were made read from the entry), or None on a miss."""
    hit = load_cached(key, n)
    if hit is None:
        return None
    z, meta = hit
    logger.info("scores read from cache %s (%d samples, mode %s)", key, n, meta["mode"])
    return Scores(
        z=z, label_token_ids={k: list(v) for k, v in meta["label_token_ids"].items()}, mode=meta["mode"],
        chat_template=meta["chat_template"], prompt_example=meta["prompt_example"], from_cache=True,
        n_prefix_tokens=int(meta["n_prefix_tokens"]), seconds=float(meta["seconds"]),
        scorer_version=int(meta["scorer_version"]), llama_cpp_version=meta["llama_cpp_version"], **inputs,
    )


@dataclass(frozen=True)
class _Run:
    """What one pass of the model over the texts made (the parts of :class:`Scores` it decides)."""

    z: np.ndarray
    label_token_ids: dict[str, list[int]]
    mode: ResolvedMode
    chat_template: str
    prompt_example: str
    n_prefix_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


def _score_texts(llm, texts: Sequence[str], *, mode: ScoringMode, label_texts: Sequence[str], chat_template: str | None,
                 n_ctx: int, prompt: DecisionPrompt, progress: bool | None, model_name: str) -> _Run:
    """Render, tokenize and score every text with a loaded model (the shared prefix evaluated once).

    Raises:
        ModelError: No chat template, unusable labels.
        DataError: A prompt (plus the longest label in sequence mode) longer than ``n_ctx``.
    """
    plan = _prepare(llm, texts, mode=mode, label_texts=label_texts, chat_template=chat_template, n_ctx=n_ctx,
                    prompt=prompt, model_name=model_name)
    z = _score_ids(llm, plan.ids, plan.n_prefix_tokens, plan.label_ids, plan.mode, progress)
    return plan.run(z)


@dataclass(frozen=True)
class _Plan:
    """The rendered and tokenized prompts, the label tokens and the mode: everything scoring needs but the model."""

    ids: list[list[int]]
    label_ids: list[list[int]]
    mode: ResolvedMode
    chat_template: str
    prompt_example: str
    n_prefix_tokens: int

    def run(self, z: np.ndarray, extra: dict[str, Any] | None = None) -> _Run:
        return _Run(z=z, label_token_ids=dict(zip(LABELS, self.label_ids)), mode=self.mode,
                    chat_template=self.chat_template, prompt_example=self.prompt_example,
                    n_prefix_tokens=self.n_prefix_tokens, extra=extra or {})


def _prepare(llm, texts: Sequence[str], *, mode: ScoringMode, label_texts: Sequence[str], chat_template: str | None,
             n_ctx: int, prompt: DecisionPrompt, model_name: str) -> _Plan:
    """Render and tokenize every prompt, find the label tokens, the mode and the shared prefix (no evaluation).

    ``llm`` may be a loaded model or the vocabulary alone (:class:`so8t.llama.VocabOnly`): both tokenize alike.
    """
    prompter = _Prompter(llm, chat_template, prompt)
    prompts = [prompter.render(t) for t in texts]
    ids = [prompter.tokenize(p) for p in prompts]
    lab_ids = [prompter.label_ids(prompts[0], ids[0], lab) for lab in label_texts]
    resolved = resolve_mode(lab_ids, mode, label_texts)
    longest_label = max(len(t) for t in lab_ids) if resolved == "sequence" else 1
    too_long = [i for i, s in enumerate(ids) if len(s) + longest_label - 1 > n_ctx]
    if too_long:
        i = too_long[0]
        raise DataError(f"record {i + 1} ({texts[i][:40]!r}...) has {len(ids[i])} prompt tokens > n_ctx={n_ctx}"
                        f" ({len(too_long)} such records): raise n_ctx or shorten the text")
    n_prefix = common_prefix_length(ids)
    logger.info("scoring %d samples with %s (%s mode, labels %s, %d shared prefix tokens)",
                len(ids), model_name, resolved, dict(zip(LABELS, lab_ids)), n_prefix)
    return _Plan(ids=ids, label_ids=lab_ids, mode=resolved, chat_template=prompter.template, prompt_example=prompts[0],
                 n_prefix_tokens=n_prefix)


def _score_ids(llm, ids: Sequence[Sequence[int]], n_prefix: int, lab_ids: Sequence[Sequence[int]], mode: ResolvedMode,
               progress: bool | None) -> np.ndarray:
    """``(len(ids), 3)`` scores of tokenized prompts: the shared prefix evaluated once, then each prompt's rest.

    The one per-record path of the sequential and the sharded runs.
    """
    from tqdm.auto import tqdm

    llm.reset()
    if n_prefix:
        llm.eval(list(ids[0][:n_prefix]))
    z = np.empty((len(ids), len(LABELS)), dtype=np.float64)  # (n, 3)
    lab = [list(t) for t in lab_ids]
    for i, s in enumerate(tqdm(ids, desc="scoring", unit="sample", disable=(not progress) if progress is not None else None)):
        z[i] = _score_sample(llm, list(s), n_prefix, lab, mode)
    return z


# ----------------------------------------------------------------------------- sharded scoring
@dataclass(frozen=True)
class ScoringShard:
    """One contiguous shard of a scoring job, complete in itself (sent to a worker as it is).

    Attributes:
        model_path: The GGUF, as the worker sees it.
        n_ctx: Context size.
        n_threads: llama.cpp threads (0: the worker's own count, :func:`so8t.shards.worker_threads`).
        start: Index of the shard's first record in the whole job.
        ids: Token ids of the shard's prompts (each begins with the job's shared prefix).
        n_prefix: Length of the prefix shared by every prompt of the whole job (not just this shard).
        label_ids: Token ids of each label after the prompt.
        mode: ``"first-token"`` or ``"sequence"``.
    """

    model_path: str
    n_ctx: int
    n_threads: int
    start: int
    ids: tuple[tuple[int, ...], ...]
    n_prefix: int
    label_ids: tuple[tuple[int, ...], ...]
    mode: ResolvedMode


@dataclass(frozen=True)
class ShardScores:
    """What a worker sends back: the shard's ``(k, 3)`` scores and its timing."""

    z: np.ndarray
    timing: ShardTiming


def score_shard(shard: ScoringShard) -> ShardScores:
    """Score one shard with a llama.cpp instance of its own (opened and closed here, on the worker).

    Raises:
        ModelError: The worker cannot load the model (e.g. the path does not exist there).
    """
    threads = worker_threads(shard.n_threads)
    t0 = time.perf_counter()
    llm = _load_model(Path(shard.model_path), shard.n_ctx, threads)
    t1 = time.perf_counter()
    try:
        z = _score_ids(llm, shard.ids, shard.n_prefix, shard.label_ids, shard.mode, progress=False)
    finally:
        llm.close()
    return ShardScores(z=z, timing=ShardTiming(start=shard.start, stop=shard.start + len(shard.ids), worker=where(),
                                               threads=threads, load_seconds=t1 - t0,
                                               work_seconds=time.perf_counter() - t1))


def plan_scoring_shards(path: Path, plan: _Plan, n_shards: int, n_ctx: int, n_threads: int) -> list[ScoringShard]:
    """The contiguous shards of a prepared job, balanced by the tokens each record costs to score.

    A record's weight is what :func:`_score_sample` evaluates for it: its prompt after the shared prefix,
    plus in sequence mode one token per label token after the first (:func:`so8t.shards.shard_ranges`).
    """
    lab = tuple(tuple(t) for t in plan.label_ids)
    extra = sum(len(t) - 1 for t in lab) if plan.mode == "sequence" else 0
    weights = [len(s) - plan.n_prefix_tokens + extra for s in plan.ids]
    return [ScoringShard(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, start=a,
                         ids=tuple(tuple(s) for s in plan.ids[a:b]), n_prefix=plan.n_prefix_tokens, label_ids=lab,
                         mode=plan.mode)
            for a, b in shard_ranges(len(plan.ids), n_shards, weights)]


def merge_shard_scores(parts: Sequence[ShardScores], n: int) -> np.ndarray:
    """The ``(n, 3)`` scores of every shard, in record order."""
    rows = merge_in_order([(p.timing.start, list(p.z)) for p in parts], n)
    return np.array(rows, dtype=np.float64).reshape(n, len(LABELS))


def _score_sharded(executor: ShardExecutor, path: Path, texts: Sequence[str], *, mode: ScoringMode,
                   label_texts: Sequence[str], chat_template: str | None, n_ctx: int, n_threads: int,
                   prompt: DecisionPrompt) -> _Run:
    """Prepare here (vocabulary only), score the shards on the executor's workers, merge in order."""
    vocab = VocabOnly(path)
    try:
        plan = _prepare(vocab, texts, mode=mode, label_texts=label_texts, chat_template=chat_template, n_ctx=n_ctx,
                        prompt=prompt, model_name=path.name)
    finally:
        vocab.close()
    shards = plan_scoring_shards(path, plan, executor.workers, n_ctx, n_threads)
    names = [f"scoring shard {i + 1}/{len(shards)} (records {s.start + 1}-{s.start + len(s.ids)} of {path.name})"
             for i, s in enumerate(shards)]
    parts = executor.map(score_shard, shards, names)
    z = merge_shard_scores(parts, len(texts))
    timings = [p.timing for p in parts]
    for t in timings:
        logger.info("shard %d-%d on %s: %d thread(s), model load %.2f s, scoring %.2f s", t.start + 1, t.stop, t.worker,
                    t.threads, t.load_seconds, t.work_seconds)
    return plan.run(z, extra={"shards": timings})


def read_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    """Texts and labels of a ``{"text","label"}`` JSONL file (strict, see :func:`so8t.training.data.read_jsonl`).

    Raises:
        DataError: ``file:line: ...`` for the first bad line, or a line without a label.
    """
    records = read_labelled_records(path)
    return [r.text for r in records], [r.label for r in records]


def read_labelled_records(path: str | Path) -> list:
    """The :class:`so8t.training.data.LabelledRecord` s of a labelled JSONL file (with source/category/lang when given).

    Raises:
        DataError: ``file:line: ...`` for the first bad line, or a line without a label.
    """
    from so8t.training.data import LabelledRecord, read_jsonl

    p = Path(path).expanduser()
    records = read_jsonl(p)
    bad = next((i for i, r in enumerate(records) if not isinstance(r, LabelledRecord)), None)
    if bad is not None:
        lineno = _line_of_record(p, bad)
        raise DataError(f"{p}:{lineno}: field 'label': missing (calibration data needs {{\"text\", \"label\"}} "
                        f"records with label one of {', '.join(LABELS)})")
    blank = next((i for i, r in enumerate(records) if not r.text.strip()), None)
    if blank is not None:
        raise DataError(f"{p}:{_line_of_record(p, blank)}: field 'text': empty or only whitespace (every record "
                        "needs the request to classify)")
    return records


def _line_of_record(path: Path, index: int) -> int:
    """1-based line number of the ``index``-th non-blank line (how read_jsonl counts records)."""
    seen = -1
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                seen += 1
                if seen == index:
                    return lineno
    return -1


def score_file(model_path: str | Path, data_path: str | Path, **kwargs: Any) -> Scores:
    """:func:`score_gguf` on a JSONL file; ``data_sha256`` is the file's sha256."""
    p = Path(data_path).expanduser()
    texts, labels = read_labelled(p)
    return score_gguf(model_path, texts, labels, data_sha256=sha256_file(p), **kwargs)
