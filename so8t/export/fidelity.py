"""Fidelity of a GGUF file against its Hugging Face model.

Both models see the *same token ids* (tokenized by the HF tokenizer), so tokenizer differences
cannot masquerade as numerical error; whether llama.cpp's own tokenizer gives the same ids is
reported separately. At every position of every probe the next-token distributions are compared:
KL(HF || GGUF) (mean, median and max), top-1 agreement and the largest |delta logit|. HF runs in
fp32 on CPU; llama.cpp runs with ``logits_all=True``.

:func:`corpus_fidelity` measures the same KL over a text corpus, per group of texts (e.g. per
language), in two ways: llama-perplexity's ``--kl-divergence`` windows (the token stream cut into
chunks of ``n_ctx`` tokens, BOS put first when the tokenizer adds one, only the second half of
each chunk scored) and every position of every paragraph from its start (the probe definition).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from so8t.errors import ModelError
from so8t.llama import diagnosed_message, open_llama
from so8t.export.logit_compare import compare_logits

logger = logging.getLogger(__name__)

DEFAULT_PLAIN_PROBES: tuple[str, ...] = (
    "The capital of France is Paris, and the capital of Japan is",
    "量子化したモデルの較正を確認してください。回転ゲートは",
)
DEFAULT_CHAT_PROBES: tuple[str, ...] = (
    "What is the capital of France?",
    "Please summarise this article about rotation gates.",  # rendered as the decision prompt
)


class Fidelity(BaseModel):
    """GGUF vs HF (fp32) next-token distributions over every position of the probes."""

    model_config = ConfigDict(frozen=True)

    probes_sha256: str = Field(description="Hash of the probe token ids (fidelity is re-measured when they change).")
    positions: int = Field(description="Positions compared (all positions of all probes).")
    mean_kl: float = Field(description="Mean KL(HF || GGUF) of the next-token distribution, nats.")
    median_kl: float | None = Field(None, description="Median per-position KL, nats (one sensitive position can dominate the mean).")
    max_kl: float = Field(description="Largest per-position KL, nats.")
    top1_agreement: float = Field(description="Fraction of positions whose argmax token agrees.")
    max_abs_delta_logit: float = Field(description="Largest |logit_HF - logit_GGUF| over positions and vocabulary.")
    per_probe_mean_kl: dict[str, float] = Field(default_factory=dict, description="Mean KL per probe (plain-i, chat-i).")
    per_probe_max_kl: dict[str, float] = Field(default_factory=dict, description="Largest per-position KL per probe.")
    tokenizer_match: bool = Field(description="llama.cpp's own tokenizer gives the HF ids for every probe (logits were compared on HF ids).")
    tokenizer_mismatches: list[str] = Field(default_factory=list, description="Probes where the tokenizers disagree.")


@dataclass(frozen=True)
class Probe:
    """One probe: its text as fed to the tokenizer, the HF ids, and how llama.cpp should tokenize it."""

    label: str
    text: str
    ids: tuple[int, ...]
    chat: bool  # rendered chat template: tokenize with special tokens, no extra BOS


@dataclass(frozen=True)
class ProbeSet:
    probes: tuple[Probe, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([p.ids for p in self.probes]).encode()).hexdigest()


def probe_set(model_dir: Path, texts: tuple[str, ...] | None = None) -> ProbeSet:
    """Tokenize the probes with the model's HF tokenizer.

    Args:
        model_dir: The HF model directory.
        texts: Plain-text probes; None gives the defaults (two plain, two chat-template probes when
            the tokenizer has a chat template, one of them the ALLOW/ESCALATE/DENY decision prompt).
    """
    from transformers import AutoTokenizer

    from so8t.decision import decision_messages

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    probes = []
    for i, text in enumerate(texts if texts is not None else DEFAULT_PLAIN_PROBES):
        probes.append(Probe(f"plain-{i}", text, tuple(tok(text)["input_ids"]), chat=False))
    if texts is None and getattr(tok, "chat_template", None):
        chats = [[{"role": "user", "content": DEFAULT_CHAT_PROBES[0]}], decision_messages(DEFAULT_CHAT_PROBES[1])]
        for i, msgs in enumerate(chats):
            rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            probes.append(Probe(f"chat-{i}", rendered, tuple(ids), chat=True))
    probes = [p for p in probes if p.ids]
    if not probes:
        raise ModelError(f"{model_dir}: every probe tokenized to nothing; pass non-empty probe prompts")
    return ProbeSet(tuple(probes))


def hf_logits(model_dir: Path, probes: ProbeSet) -> list[np.ndarray]:
    """fp32 HF logits, one (T, V) float64 array per probe."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in probes.probes:
            out.append(model(torch.tensor([p.ids])).logits[0].double().numpy())  # (T, V)
    del model
    return out


def _open_gguf(path: Path, n_ctx: int, threads: int = 0, logits_all: bool = False):
    """Load a GGUF for the fidelity check, quietly; the caller must ``close()`` it.

    ``threads=0`` means all cores, and batches (every probe is one) run on all cores whatever
    ``threads`` is: the ``"all"`` default of :func:`so8t.llama.thread_counts`, which
    ``ConvertConfig.threads`` documents.

    Raises:
        ModelError: llama.cpp cannot load the file (with a hint for known causes).
    """
    return open_llama(path, n_ctx, n_threads=threads, default="all", n_batch=min(n_ctx, 2048), logits_all=logits_all,
                      seed=None, message=diagnosed_message)


def measure_fidelity(model_dir: Path, ggufs: list[Path], probes: ProbeSet, threads: int = 0) -> dict:
    """Fidelity of each GGUF against the HF model.

    Returns:
        ``{file name: Fidelity}``.

    Raises:
        ModelError: a GGUF cannot be loaded.
    """
    logger.info("fidelity: HF fp32 logits on %d probes (%d positions)", len(probes.probes), sum(len(p.ids) for p in probes.probes))
    reference = hf_logits(model_dir, probes)
    n_ctx = max(64, max(len(p.ids) for p in probes.probes) + 8)
    results = {}
    for path in ggufs:
        llm = _open_gguf(path, n_ctx, threads, logits_all=True)
        try:
            kls, agree, delta, mismatches, per_probe = [], [], 0.0, [], {}
            for p, ref in zip(probes.probes, reference):
                llm.reset()
                llm.eval(list(p.ids))
                gg = np.array(llm.scores[: len(p.ids)], dtype=np.float64)  # (T, V)
                cmp = compare_logits(ref, gg)
                kls.append(cmp["kl"])
                per_probe[p.label] = float(cmp["kl"].mean())
                agree.append(cmp["agree"])
                delta = max(delta, cmp["max_abs_delta"])
                own = llm.tokenize(p.text.encode("utf-8"), add_bos=not p.chat, special=p.chat)
                if tuple(own) != p.ids:
                    mismatches.append(f"{p.label}: llama.cpp {len(own)} ids vs HF {len(p.ids)}")
        finally:
            llm.close()
        kl = np.concatenate(kls)
        results[path.name] = Fidelity(
            probes_sha256=probes.sha256, positions=int(kl.size), mean_kl=float(kl.mean()), median_kl=float(np.median(kl)),
            max_kl=float(kl.max()), top1_agreement=float(np.concatenate(agree).mean()), max_abs_delta_logit=delta,
            per_probe_mean_kl=per_probe, per_probe_max_kl={p.label: float(k.max()) for p, k in zip(probes.probes, kls)},
            tokenizer_match=not mismatches, tokenizer_mismatches=mismatches,
        )
        logger.info("fidelity %s: KL mean %.2e max %.2e, top-1 %.3f, max |dlogit| %.3f%s", path.name, kl.mean(), kl.max(),
                    results[path.name].top1_agreement, delta, "" if not mismatches else f" (tokenizers differ on {len(mismatches)} probe(s))")
    return results


# ---------------------------------------------------------------- corpus


def kl_summary(kl: np.ndarray, agree: np.ndarray) -> dict:
    """Statistics of per-position KLs as llama-perplexity reports them.

    Returns:
        ``{"positions", "mean_kl", "stderr_kl", "median_kl", "p90_kl", "p99_kl", "max_kl", "top1_agreement"}``;
        the standard error is llama-perplexity's sqrt(var / (n - 1)); percentiles interpolate linearly.
    """
    kl = np.asarray(kl, dtype=np.float64)
    n = int(kl.size)
    if n == 0:
        return {"positions": 0}
    return {
        "positions": n, "mean_kl": float(kl.mean()), "stderr_kl": float(kl.std() / np.sqrt(n - 1)) if n > 1 else 0.0,
        "median_kl": float(np.median(kl)), "p90_kl": float(np.percentile(kl, 90)), "p99_kl": float(np.percentile(kl, 99)),
        "max_kl": float(kl.max()), "top1_agreement": float(np.asarray(agree).mean()),
    }


def perplexity_chunks(ids: list[int], n_ctx: int, bos_id: int | None) -> list[list[int]]:
    """llama-perplexity's chunks: ``len(ids) // n_ctx`` windows of ``n_ctx`` tokens (the remainder is
    dropped), the first token of each replaced by BOS when ``bos_id`` is given. In each chunk the
    next-token distributions at positions ``n_ctx // 2 .. n_ctx - 2`` are scored (:func:`scored_positions`).
    """
    if n_ctx < 4:
        raise ValueError(f"n_ctx {n_ctx} is too small: use at least 4 tokens per chunk")
    chunks = [list(ids[i * n_ctx:(i + 1) * n_ctx]) for i in range(len(ids) // n_ctx)]
    if bos_id is not None:
        for c in chunks:
            c[0] = bos_id
    return chunks


def scored_positions(n_ctx: int) -> slice:
    """Positions llama-perplexity scores in a chunk: the second half, without the last (it has no next token)."""
    return slice(n_ctx // 2, n_ctx - 1)


def corpus_fidelity(model_dir: Path, ggufs: list[Path], groups: dict[str, list[str]], *, n_ctx: int = 256,
                    threads: int = 0) -> dict:
    """KL(HF fp32 || GGUF) over text groups, e.g. ``{"en": [...], "ja": [...]}``.

    For every group, two samples (same HF token ids fed to both models):

    * ``"chunked"``: llama-perplexity ``--kl-divergence``: the group's texts joined by blank lines,
      tokenized once, cut into chunks of ``n_ctx`` tokens (:func:`perplexity_chunks`), second half
      of each chunk scored (:func:`scored_positions`); groups shorter than ``n_ctx`` give 0 positions;
    * ``"paragraphs"``: every position of every text evaluated on its own from its start (with BOS
      when the tokenizer adds one): the definition of the probe fidelity.

    Returns:
        ``{gguf file name: {group: {"chunked": kl_summary, "paragraphs": kl_summary}}}`` plus
        ``"_tokens": {group: {"chunked": tokens in whole chunks, "paragraphs": tokens}}``.

    Raises:
        ModelError: a GGUF cannot be loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    probe = tok("a")["input_ids"]
    bos_id = tok.bos_token_id if tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id] else None
    units: list[tuple[str, str, list[int], slice]] = []  # (group, sample, ids, scored positions)
    tokens: dict[str, dict[str, int]] = {}
    for group, texts in groups.items():
        stream = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
        chunks = perplexity_chunks(stream, n_ctx, bos_id)
        paragraphs = [ids for ids in (tok(t)["input_ids"] for t in texts) if ids]
        units += [(group, "chunked", c, scored_positions(n_ctx)) for c in chunks]
        units += [(group, "paragraphs", ids, slice(0, len(ids))) for ids in paragraphs]
        tokens[group] = {"chunked": n_ctx * len(chunks), "paragraphs": sum(map(len, paragraphs))}
    if not units:
        raise ModelError("corpus fidelity: every text tokenized to nothing; pass non-empty texts")
    longest = max(len(u[2]) for u in units)
    logger.info("corpus fidelity: %d windows/paragraphs in %d group(s), %d GGUF file(s)", len(units), len(groups), len(ggufs))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    llms = []
    try:
        for path in ggufs:
            llms.append(_open_gguf(path, longest + 8, threads, logits_all=True))
        kls: dict[tuple[str, str, str], list[np.ndarray]] = {}
        agree: dict[tuple[str, str, str], list[np.ndarray]] = {}
        for group, sample, ids, pos in units:
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0].double().numpy()[pos]
            for path, llm in zip(ggufs, llms):
                llm.reset()
                llm.eval(list(ids))
                gg = np.array(llm.scores[: len(ids)], dtype=np.float64)[pos]
                cmp = compare_logits(ref, gg)
                kls.setdefault((path.name, group, sample), []).append(cmp["kl"])
                agree.setdefault((path.name, group, sample), []).append(cmp["agree"])
    finally:
        for llm in llms:
            llm.close()
        del model
    empty = np.zeros(0)
    out: dict = {"_tokens": tokens}
    for path in ggufs:
        out[path.name] = {
            g: {s: kl_summary(np.concatenate(kls.get((path.name, g, s), [empty])), np.concatenate(agree.get((path.name, g, s), [empty])))
                for s in ("chunked", "paragraphs")}
            for g in groups
        }
    return out
