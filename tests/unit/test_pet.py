"""PET against a hand computation; padding invariance; the three-phase schedule."""

import numpy as np
import pytest
import torch

from so8t.training.pet import pet_energy, pet_schedule


def _hand_pet(h: np.ndarray, mask: np.ndarray) -> float:
    total, count = 0.0, 0
    B, T, D = h.shape
    for b in range(B):
        for t in range(T - 2):
            if mask[b, t] and mask[b, t + 1] and mask[b, t + 2]:
                for d in range(D):
                    total += (h[b, t + 2, d] - 2 * h[b, t + 1, d] + h[b, t, d]) ** 2
                    count += 1
    return total / count if count else 0.0


def test_pet_equals_hand_computation():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 6, 3))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    got = pet_energy(torch.tensor(h), torch.tensor(mask)).item()
    assert got == pytest.approx(_hand_pet(h, mask), rel=1e-6)


def test_small_example_by_hand():
    # one sequence, D=1, values 0, 1, 4, 9: second differences 2, 2 -> mean of squares 4
    h = torch.tensor([[[0.0], [1.0], [4.0], [9.0]]])
    assert pet_energy(h, torch.ones(1, 4)).item() == pytest.approx(4.0)


def test_padded_positions_change_nothing():
    torch.manual_seed(0)
    h = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1]])
    padded = torch.cat([h, torch.randn(1, 3, 4) * 100], dim=1)
    pmask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    assert pet_energy(padded, pmask).item() == pytest.approx(pet_energy(h, mask).item(), rel=1e-6)


def test_no_valid_triple_gives_zero_with_grad():
    h = torch.randn(1, 4, 2, requires_grad=True)
    e = pet_energy(h, torch.tensor([[1, 1, 0, 0]]))
    assert e.item() == 0.0
    e.backward()  # the graph is intact


def test_schedule_three_phases():
    assert pet_schedule(0, 100, 0.5) == pytest.approx(0.05)
    assert pet_schedule(29, 100, 0.5) == pytest.approx(0.05)
    assert pet_schedule(30, 100, 0.5) == pytest.approx(0.2)
    assert pet_schedule(69, 100, 0.5) == pytest.approx(0.2)
    assert pet_schedule(70, 100, 0.5) == pytest.approx(0.5)
    assert pet_schedule(100, 100, 0.5) == pytest.approx(0.5)
    assert pet_schedule(50, 100, 0.0) == 0.0
