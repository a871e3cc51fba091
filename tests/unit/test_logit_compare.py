"""KL and logit comparison (bake verification, GGUF fidelity) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import rel_entr
from scipy.special import softmax as sp_softmax

from so8t.export import bake, fidelity as gguf_fidelity
from so8t.export.logit_compare import compare_logit_sets, compare_logits, kl_divergence


def _scipy_kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    return rel_entr(sp_softmax(ref, axis=-1), sp_softmax(got, axis=-1)).sum(-1)


def test_kl_matches_scipy_rel_entr_on_random_logits():
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 3, (6, 97))
    got = ref + rng.normal(0, 0.8, ref.shape)
    np.testing.assert_allclose(kl_divergence(ref, got), _scipy_kl(ref, got), rtol=1e-10, atol=1e-14)
    # large logits (a real vocabulary's scale) stay finite and exact
    np.testing.assert_allclose(kl_divergence(ref * 40, got * 40), _scipy_kl(ref * 40, got * 40), rtol=1e-8, atol=1e-12)
    assert np.all(kl_divergence(ref, ref) == 0.0)


def test_kl_direction_pinned_by_a_hand_computed_case():
    # P = softmax([0, ln 3]) = (1/4, 3/4); Q = softmax([0, 0]) = (1/2, 1/2)
    ref, got = np.array([[0.0, math.log(3.0)]]), np.array([[0.0, 0.0]])
    kl_pq = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # 0.130812...
    kl_qp = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # 0.143841...: the other direction
    assert kl_divergence(ref, got)[0] == pytest.approx(kl_pq, rel=1e-12)
    assert kl_divergence(got, ref)[0] == pytest.approx(kl_qp, rel=1e-12)
    assert abs(kl_pq - kl_qp) > 0.01


def test_compare_logits_per_position_and_padded_vocabulary():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 2, (5, 40))
    got = ref + rng.normal(0, 0.5, ref.shape)
    got_padded = np.concatenate([got, np.full((5, 8), -30.0)], axis=1)  # a GGUF with a padded vocabulary
    cmp = compare_logits(ref, got_padded)
    np.testing.assert_allclose(cmp["kl"], _scipy_kl(ref, got), rtol=1e-10)
    assert cmp["agree"].tolist() == [ref[t].argmax() == got[t].argmax() for t in range(5)]
    assert cmp["max_abs_delta"] == pytest.approx(max(abs(a - b) for ra, rb in zip(ref, got) for a, b in zip(ra, rb)))


def test_pooled_comparison_over_probes_from_torch_tensors():
    g = torch.Generator().manual_seed(11)
    refs = [torch.randn(t, 30, generator=g) * 2 for t in (3, 7, 1)]
    gots = [r + torch.randn(r.shape, generator=g) * 0.3 for r in refs]
    out = compare_logit_sets(refs, gots)
    kl = np.concatenate([_scipy_kl(r.double().numpy(), q.double().numpy()) for r, q in zip(refs, gots)])
    agree = np.concatenate([(r.argmax(-1) == q.argmax(-1)).numpy() for r, q in zip(refs, gots)])
    assert out["tokens"] == 11
    assert out["mean_kl"] == pytest.approx(kl.mean(), rel=1e-9) and out["max_kl"] == pytest.approx(kl.max(), rel=1e-9)
    assert out["top1_agreement"] == pytest.approx(agree.mean())
    assert out["max_abs_logit_delta"] == pytest.approx(max(float((r - q).abs().max()) for r, q in zip(refs, gots)))
    with pytest.raises(ValueError, match="same non-zero number of probes"):
        compare_logit_sets(refs, gots[:2])


def test_bake_and_gguf_fidelity_use_this_one_comparison():
    assert gguf_fidelity.compare_logits is compare_logits
    assert bake.compare_logit_sets is compare_logit_sets
