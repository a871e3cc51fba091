"""SO(8) block rotations: skew generators, exact rotations, block-diagonal application.

The method (``so8t-method.md`` section 1): a layer's gate holds ``d/8`` skew-symmetric 8x8
generators ``A_b``, each parametrised by its 28 strict-upper-triangle entries, stored in
float32. ``R_b = expm(A_b)`` (or the Cayley map) is an exact rotation (``R^T R = I``,
``det R = +1``), so no orthogonality penalty is needed. The activations ``x`` (column vector
convention) become ``blockdiag(R_1..R_{d/8}) x``.
"""

from __future__ import annotations

from typing import Literal

import torch

BLOCK = 8
#: Free parameters of one skew-symmetric 8x8 generator (strict upper triangle).
N_FREE = BLOCK * (BLOCK - 1) // 2  # 28

RotationMap = Literal["expm", "cayley"]

_IU = torch.triu_indices(BLOCK, BLOCK, offset=1)  # (2, 28)


def skew_from_params(params: torch.Tensor) -> torch.Tensor:
    """Build skew-symmetric generators from their free parameters.

    Args:
        params: ``(n_blocks, 28)`` strict-upper-triangle entries.

    Returns:
        ``(n_blocks, 8, 8)`` tensor ``A`` with ``A^T = -A``.
    """
    if params.ndim != 2 or params.shape[-1] != N_FREE:
        raise ValueError(f"generator params have shape {tuple(params.shape)}: expected (n_blocks, {N_FREE})")
    n = params.shape[0]
    upper = params.new_zeros(n, BLOCK, BLOCK)
    upper[:, _IU[0], _IU[1]] = params
    return upper - upper.transpose(-1, -2)


def rotations_from_params(params: torch.Tensor, mapping: RotationMap = "expm") -> torch.Tensor:
    """Exact rotations ``R_b`` from generator parameters, computed in float32.

    Args:
        params: ``(n_blocks, 28)`` generator parameters (any float dtype; promoted to float32).
        mapping: ``"expm"`` (matrix exponential) or ``"cayley"`` ((I - A/2)^-1 (I + A/2)).

    Returns:
        ``(n_blocks, 8, 8)`` float32 rotations. At ``params == 0`` this is exactly the identity.
    """
    a = skew_from_params(params.float())  # (n, 8, 8)
    if mapping == "expm":
        return torch.linalg.matrix_exp(a)
    if mapping == "cayley":
        eye = torch.eye(BLOCK, dtype=a.dtype, device=a.device).expand_as(a)
        return torch.linalg.solve(eye - 0.5 * a, eye + 0.5 * a)
    raise ValueError(f"rotation mapping {mapping!r} is unknown: use 'expm' or 'cayley'")


def apply_block_rotation(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Apply ``blockdiag(R) x`` to the last dimension of ``x``.

    float32 activations are rotated in float32. Half-precision activations (fp16/bf16 models)
    are rotated in their own dtype with the float32 rotations rounded to it: the matmul
    accumulates in float32, an identity rotation still returns ``x`` bit for bit, and the
    rounding is that of the model's own ``o_proj`` matmul. This avoids two full-size casts per
    layer and direction, which dominate the gate's cost on a GPU.

    Args:
        x: ``(..., d)`` activations, ``d == 8 * n_blocks``.
        rotations: ``(n_blocks, 8, 8)`` rotations (float32).

    Returns:
        ``(..., d)`` rotated activations, same dtype as ``x``.
    """
    n_blocks = rotations.shape[0]
    d = x.shape[-1]
    if d != n_blocks * BLOCK:
        raise ValueError(f"activation width {d} does not match {n_blocks} blocks of {BLOCK}")
    compute = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
    xb = x.to(compute).reshape(*x.shape[:-1], n_blocks, BLOCK)  # (..., d/8, 8)
    # y_b = R_b @ x_b for each block b: column-vector convention.
    yb = torch.einsum("bij,...bj->...bi", rotations.to(compute), xb)  # (..., d/8, 8)
    return yb.reshape(x.shape).to(x.dtype)


def block_diagonal(rotations: torch.Tensor) -> torch.Tensor:
    """Dense ``(d, d)`` block-diagonal matrix of ``(n_blocks, 8, 8)`` rotations."""
    return torch.block_diag(*rotations.unbind(0))


def fold_into_weight(weight: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Fold input-side rotations into a Linear weight: ``W' = W @ blockdiag(R)``.

    ``o_proj(R x) = W (R x) = (W R) x`` for the column-vector convention. Computed in float32 and
    returned in ``weight``'s dtype. Never call this on quantized (4-bit) weights.

    Args:
        weight: ``(out, d)`` weight of the Linear that receives the rotated input.
        rotations: ``(d/8, 8, 8)`` rotations.

    Returns:
        ``(out, d)`` folded weight.
    """
    out, d = weight.shape
    n_blocks = rotations.shape[0]
    if d != n_blocks * BLOCK:
        raise ValueError(f"weight input width {d} does not match {n_blocks} blocks of {BLOCK}")
    wb = weight.float().reshape(out, n_blocks, BLOCK)  # (out, d/8, 8)
    # (W R)[o, b, i] = sum_j W[o, b, j] R_b[j, i]
    folded = torch.einsum("obj,bji->obi", wb, rotations.float())  # (out, d/8, 8)
    return folded.reshape(out, d).to(weight.dtype)


def orthogonality_error(rotations: torch.Tensor) -> float:
    """Max absolute entry of ``R^T R - I`` over all blocks (float64 check)."""
    r = rotations.double()
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    return float((r.transpose(-1, -2) @ r - eye).abs().max())
