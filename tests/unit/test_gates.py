"""Gates on real (tiny) HF models: exact identity at init, refusal, save/load, removal."""

import copy

import pytest
import torch

from so8t.errors import ModelError
from so8t.training.gates import attach_gates, iter_gates, load_gates, remove_gates, resolve_layers, save_gates


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _lora(model):
    from peft import LoraConfig, get_peft_model

    from so8t.training.train import resolve_lora_targets

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=resolve_lora_targets(model, "all-linear")))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_phi3"])
def test_step0_logits_equal_base_exactly(request, fixture):
    path = request.getfixturevalue(fixture)
    ids = torch.randint(3, 500, (2, 17))
    base = _load(path)
    with torch.no_grad():
        ref = base(ids).logits
    gated = _lora(_load(path))
    layers = attach_gates(gated, "all")
    assert layers == [0, 1]
    with torch.no_grad():
        got = gated(ids).logits
    assert torch.equal(got, ref)


def test_generators_are_float32_and_trainable(tiny_llama):
    m = _lora(_load(tiny_llama))
    attach_gates(m)
    gates = dict(iter_gates(m))
    assert all(g.generators.dtype == torch.float32 and g.generators.requires_grad for g in gates.values())
    assert gates[0].generators.shape == (256 // 8, 28)


def _independent_rotation(params) -> "np.ndarray":
    """blockdiag(expm(A_b)) built with numpy/scipy from the 28 strict-upper-triangle entries."""
    import numpy as np
    from scipy.linalg import block_diag, expm

    blocks = []
    for row in params.detach().double().numpy():
        a = np.zeros((8, 8))
        a[np.triu_indices(8, k=1)] = row
        blocks.append(expm(a - a.T))
    return block_diag(*blocks)


def test_gate_rotates_o_proj_input(tiny_llama):
    """o_proj receives blockdiag(R) x, not the raw concatenated heads x (fails with the gate hook removed)."""
    m = _load(tiny_llama)
    attach_gates(m, [1])
    gate = dict(iter_gates(m))[1]
    torch.manual_seed(0)
    with torch.no_grad():
        gate.generators.normal_(std=0.1)
    seen = {}
    o_proj = m.model.layers[1].self_attn.o_proj
    # prepended, so it runs before the gate's own pre-hook: the raw input of o_proj
    h_raw = o_proj.register_forward_pre_hook(lambda mod, args: seen.update(raw=args[0].detach().clone()), prepend=True)
    h_out = o_proj.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad():
        m(torch.randint(3, 500, (1, 5), generator=torch.Generator().manual_seed(1)))
    h_raw.remove()
    h_out.remove()
    raw, x = seen["raw"].double(), seen["x"].double()
    want = raw @ torch.from_numpy(_independent_rotation(gate.generators)).T  # column convention: x' = R x
    assert (x - raw).abs().max() > 1e-3, "o_proj saw its raw input: the gate did not rotate it"
    torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["y"], seen["x"] @ o_proj.weight.T)


def test_refuses_architecture_without_o_proj(tiny_gpt2):
    with pytest.raises(ModelError, match="has no attention o_proj"):
        attach_gates(_load(tiny_gpt2))


def test_refuses_width_not_divisible_by_8(tmp_path, sp_model):
    from tests.fixtures.tiny_models import build_tiny_llama

    path = build_tiny_llama(tmp_path / "odd", sp_model, hidden=60, heads=5, kv_heads=5, layers=1)
    with pytest.raises(ModelError, match=r"hidden width 60 .* not divisible by 8") as e:
        attach_gates(_load(path))
    assert "head_dim 12 is not divisible by 8" in str(e.value)


def test_layer_spec():
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("0, 3", 4) == [0, 3]
    assert resolve_layers("none", 4) == []
    with pytest.raises(ModelError, match="out of range"):
        resolve_layers("5", 4)
    with pytest.raises(ModelError, match="comma-separated"):
        resolve_layers("first", 4)


def test_save_load_roundtrip_and_deepcopy_and_remove(tiny_llama, tmp_path):
    ids = torch.randint(3, 500, (1, 9))
    m = _load(tiny_llama)
    attach_gates(m)
    torch.manual_seed(0)
    with torch.no_grad():
        for _, g in iter_gates(m):
            g.generators.normal_(std=0.1)
        ref = m(ids).logits
    save_gates(m, tmp_path)
    m2 = _load(tiny_llama)
    assert load_gates(m2, tmp_path) == [0, 1]
    with torch.no_grad():
        assert torch.equal(m2(ids).logits, ref)
    # a deep copy's hooks use the copy's gates
    m3 = copy.deepcopy(m2)
    with torch.no_grad():
        for _, g in iter_gates(m3):
            g.generators.zero_()
        assert torch.equal(m2(ids).logits, ref)
    assert remove_gates(m3) == [0, 1]
    with torch.no_grad():
        assert torch.equal(m3(ids).logits, _load(tiny_llama)(ids).logits)
    assert not list(iter_gates(m3))


def test_load_refuses_missing_or_foreign_file(tiny_llama, tmp_path):
    with pytest.raises(ModelError, match="no SO8T gates file"):
        load_gates(_load(tiny_llama), tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "so8t_gates.safetensors"))
    with pytest.raises(ModelError, match="not an SO8T gates file"):
        load_gates(_load(tiny_llama), tmp_path)


def test_batched_rotation_cache_matches_per_gate_and_tracks_changes(tiny_llama):
    from so8t.training.rotation import rotations_from_params

    m = _load(tiny_llama)
    attach_gates(m)
    gates = dict(iter_gates(m))
    with torch.no_grad():
        for g in gates.values():
            g.generators.normal_(std=0.1)
    for g in gates.values():
        torch.testing.assert_close(g.rotations(), rotations_from_params(g.generators), atol=0, rtol=0)
    with torch.no_grad():
        gates[1].generators.mul_(2)  # in-place change: the cache notices
    torch.testing.assert_close(gates[1].rotations(), rotations_from_params(gates[1].generators), atol=0, rtol=0)
    # a no-grad forward then a grad forward: the generators still receive gradients
    ids = torch.randint(3, 500, (1, 7))
    with torch.no_grad():
        m(ids)
    m(ids).logits.sum().backward()
    assert all(g.generators.grad is not None and g.generators.grad.abs().max() > 0 for g in gates.values())
