"""SO(8) rotation math against independent computations (scipy expm, dense numpy)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from so8t.training.rotation import (
    N_FREE,
    apply_block_rotation,
    block_diagonal,
    fold_into_weight,
    orthogonality_error,
    rotations_from_params,
    skew_from_params,
)


def _numpy_skew(p: np.ndarray) -> np.ndarray:
    a = np.zeros((8, 8))
    k = 0
    for i in range(8):
        for j in range(i + 1, 8):
            a[i, j], a[j, i] = p[k], -p[k]
            k += 1
    return a


def test_skew_layout_matches_hand_built():
    p = torch.randn(3, N_FREE, dtype=torch.float64)
    a = skew_from_params(p)
    for b in range(3):
        np.testing.assert_array_equal(a[b].numpy(), _numpy_skew(p[b].numpy()))


@pytest.mark.parametrize("mapping", ["expm", "cayley"])
def test_rotation_is_exact_special_orthogonal(mapping):
    torch.manual_seed(0)
    r = rotations_from_params(torch.randn(16, N_FREE) * 0.5, mapping)
    assert r.dtype == torch.float32
    assert orthogonality_error(r) < 5e-6
    dets = torch.linalg.det(r.double())
    assert torch.allclose(dets, torch.ones_like(dets), atol=1e-5)


def test_expm_matches_scipy():
    torch.manual_seed(1)
    p = torch.randn(4, N_FREE) * 0.3
    r = rotations_from_params(p, "expm")
    for b in range(4):
        ref = scipy.linalg.expm(_numpy_skew(p[b].double().numpy()))
        np.testing.assert_allclose(r[b].numpy(), ref, atol=2e-6)


def test_cayley_matches_numpy():
    p = torch.randn(2, N_FREE) * 0.3
    r = rotations_from_params(p, "cayley")
    for b in range(2):
        a = _numpy_skew(p[b].double().numpy())
        ref = np.linalg.solve(np.eye(8) - a / 2, np.eye(8) + a / 2)
        np.testing.assert_allclose(r[b].numpy(), ref, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_zero_generators_are_exact_identity(dtype):
    r = rotations_from_params(torch.zeros(5, N_FREE))
    assert torch.equal(r, torch.eye(8).expand(5, 8, 8))
    x = torch.randn(2, 3, 40).to(dtype)
    assert torch.equal(apply_block_rotation(x, r), x)


def test_apply_equals_dense_block_diagonal_product():
    torch.manual_seed(2)
    r = rotations_from_params(torch.randn(6, N_FREE) * 0.2)
    x = torch.randn(2, 5, 48)
    dense = block_diagonal(r).double().numpy()  # (48, 48)
    ref = np.einsum("ij,btj->bti", dense, x.double().numpy())  # column vectors: y = B x
    np.testing.assert_allclose(apply_block_rotation(x, r).double().numpy(), ref, atol=1e-5)


def test_fold_into_weight_equals_rotate_then_project():
    torch.manual_seed(3)
    r = rotations_from_params(torch.randn(4, N_FREE) * 0.3)
    w = torch.randn(20, 32)
    x = torch.randn(7, 32)
    y_gated = apply_block_rotation(x, r) @ w.T
    y_folded = x @ fold_into_weight(w, r).T
    torch.testing.assert_close(y_folded, y_gated, atol=1e-5, rtol=1e-5)
    # and equals the dense W @ blockdiag(R)
    torch.testing.assert_close(fold_into_weight(w, r), w @ block_diagonal(r), atol=1e-6, rtol=1e-6)


def test_width_mismatch_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        apply_block_rotation(torch.randn(2, 12), torch.eye(8).expand(2, 8, 8))
    with pytest.raises(ValueError, match="expected"):
        skew_from_params(torch.zeros(3, 27))
