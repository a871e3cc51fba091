"""One comparison of two models' next-token logits: KL, top-1 agreement, largest |delta logit|.

Used by the bake's verification (gated model vs baked model) and by GGUF fidelity (HF fp32 vs
llama.cpp), so both report the same quantity: per position, KL(P_ref || P_got) in nats, with
``P = softmax(logits)`` over the vocabulary, summed over the vocabulary (not averaged), in float64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from so8t.logits import log_softmax

__all__ = ["compare_logits", "compare_logit_sets", "kl_divergence"]


def _as_f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def kl_divergence(ref, got) -> np.ndarray:
    """Per-position ``KL(softmax(ref) || softmax(got))`` in nats for ``(T, V)`` logits.

    When the two vocabularies differ in size (a GGUF may pad or trim the embedding), the common
    first ``V`` entries are compared. Rounding can make a KL of identical distributions a tiny
    negative number: it is clipped at 0.
    """
    ref, got = _as_f64(ref), _as_f64(got)
    v = min(ref.shape[-1], got.shape[-1])
    lp, lq = log_softmax(ref[..., :v]), log_softmax(got[..., :v])
    return np.maximum((np.exp(lp) * (lp - lq)).sum(-1), 0.0)


def compare_logits(ref, got) -> dict:
    """Per-position comparison of two ``(T, V)`` logit arrays.

    Returns:
        ``{"kl": (T,) KL(ref || got), "agree": (T,) bool top-1 agreement, "max_abs_delta": float}``.
    """
    ref, got = _as_f64(ref), _as_f64(got)
    v = min(ref.shape[-1], got.shape[-1])
    ref, got = ref[..., :v], got[..., :v]
    return {"kl": kl_divergence(ref, got), "agree": ref.argmax(-1) == got.argmax(-1),
            "max_abs_delta": float(np.abs(ref - got).max())}


def compare_logit_sets(refs: Sequence, gots: Sequence) -> dict[str, float]:
    """Pooled comparison over several probes (each ``(T_i, V)``): the bake's verification summary.

    Returns:
        ``max_abs_logit_delta``, ``mean_kl`` and ``max_kl`` over all positions, ``top1_agreement``
        (fraction of positions) and ``tokens`` (number of positions).
    """
    if len(refs) != len(gots) or not refs:
        raise ValueError(f"compare_logit_sets needs the same non-zero number of probes on both sides: {len(refs)} vs {len(gots)}")
    parts = [compare_logits(a, b) for a, b in zip(refs, gots)]
    kl = np.concatenate([p["kl"] for p in parts])
    agree = np.concatenate([p["agree"] for p in parts])
    return {"max_abs_logit_delta": max(p["max_abs_delta"] for p in parts), "mean_kl": float(kl.mean()),
            "max_kl": float(kl.max()), "top1_agreement": float(agree.mean()), "tokens": int(kl.size)}
