"""PET: the positional-energy regulariser on the final hidden states.

``L_pet = lambda(p) * mean over valid (t, unit) of (h[t+2] - 2 h[t+1] + h[t])^2``, where a triple
``(t, t+1, t+2)`` is valid only if all three positions are real tokens (attention mask), and
``lambda(p)`` follows three phases of training progress ``p = step / total_steps``:
0.1 x pet_lambda before 30 %, 0.4 x until 70 %, then 1.0 x (``so8t-method.md`` section 2).
"""

from __future__ import annotations

import torch

#: (progress threshold, multiplier) of the warm-up / plateau / strong phases.
PET_PHASES: tuple[tuple[float, float], ...] = ((0.3, 0.1), (0.7, 0.4), (float("inf"), 1.0))


def pet_schedule(step: int, total_steps: int, pet_lambda: float) -> float:
    """The PET weight at ``step`` of ``total_steps``.

    Args:
        step: Optimizer steps done (0-based).
        total_steps: Planned optimizer steps (>= 1).
        pet_lambda: The peak weight; 0 switches PET off.

    Returns:
        ``pet_lambda`` times the phase multiplier.
    """
    if pet_lambda == 0:
        return 0.0
    p = step / max(total_steps, 1)
    for limit, mult in PET_PHASES:
        if p < limit:
            return pet_lambda * mult
    return pet_lambda  # unreachable: the last limit is inf


def pet_energy(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared second difference of ``hidden`` along time over valid triples.

    Args:
        hidden: ``(B, T, D)`` final hidden states.
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for padding; ``None`` means all real.

    Returns:
        Scalar tensor (float32); 0 when no triple is valid (keeps the graph).
    """
    h = hidden.float()
    if h.shape[1] < 3:
        return h.sum() * 0.0
    d2 = h[:, 2:] - 2.0 * h[:, 1:-1] + h[:, :-2]  # (B, T-2, D)
    if attention_mask is None:
        return d2.pow(2).mean()
    m = attention_mask.to(torch.bool)
    valid = (m[:, 2:] & m[:, 1:-1] & m[:, :-2]).to(h.dtype)  # (B, T-2)
    n = valid.sum() * h.shape[-1]
    if n == 0:
        return h.sum() * 0.0
    return (d2.pow(2) * valid.unsqueeze(-1)).sum() / n
