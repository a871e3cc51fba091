"""Bake on tiny Llama and Phi-3 with random non-trivial rotations on all layers plus a trained LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from so8t.export.bake import BakeConfig, bake, fold_rotations
from so8t.export.logit_compare import compare_logit_sets as compare_logits
from so8t.cli import main
from so8t.config import TrainConfig
from so8t.errors import ModelError
from so8t.training.gates import GATES_FILE, iter_gates, load_gates, save_gates
from so8t.training.train import train


def _trained(model, data, out):
    return train(TrainConfig(base_model=str(model), dataset=str(data), output_dir=str(out), batch_size=2,
                             gradient_accumulation_steps=1, max_steps=3, save_steps=3, max_length=96,
                             learning_rate=1e-2, lora_r=4, lora_alpha=8, seed=3))


def _randomise_gates(model_path, base, std=0.1, seed=0):
    """Replace the trained generators by random ones (std 0.1) on all layers."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    load_gates(m, model_path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gate in iter_gates(m):
            gate.generators.copy_(torch.randn(gate.generators.shape, generator=g) * std)
    save_gates(m, model_path)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_phi3"])
def test_baked_equals_gated(request, fixture, tiny_dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = request.getfixturevalue(fixture)
    run = _trained(base, tiny_dataset, tmp_path / "run")
    _randomise_gates(run, base)
    out = tmp_path / "baked"
    report = bake(BakeConfig(model_path=str(run), output_path=str(out)))
    assert report.passed and len(report.layers_folded) == 2
    assert report.max_abs_logit_delta <= 1e-3 and report.mean_kl <= 1e-6
    assert all(f.orthogonality_error < 1e-5 and f.max_abs_weight_change > 1e-3 for f in report.layers_folded)

    # independent check: a plain load of the baked dir vs (base + LoRA + gates) on fresh random ids
    baked = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(baked).__name__ == {"tiny_llama": "LlamaForCausalLM", "tiny_phi3": "Phi3ForCausalLM"}[fixture]
    assert not any("lora" in k or "so8t" in k for k in baked.state_dict())
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    assert {k: tuple(v.shape) for k, v in baked.state_dict().items()} == {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    gated = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), str(run)).eval()
    load_gates(gated, run)
    ids = torch.randint(3, 500, (3, 23), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = gated(ids).logits, baked(ids).logits
    cmp = compare_logits(list(a), list(b))
    assert cmp["max_abs_logit_delta"] <= 1e-3
    assert cmp["mean_kl"] <= 1e-6
    # and the gates really mattered: without them the logits differ
    from so8t.training.gates import remove_gates

    remove_gates(gated)
    with torch.no_grad():
        assert (gated(ids).logits - a).abs().max() > 1e-2
    saved = json.loads((out / "bake_report.json").read_text())
    assert saved["passed"] and saved["probe_count"] == 4 and saved["probe_tokens"] >= 20 and saved["dtype"] == "float32"
    assert saved["lora_modules"] == sum(1 for n, _ in gated.named_modules() if n.endswith(".lora_A"))
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_fold_rotations_matches_dense_product():
    from so8t.training.rotation import block_diagonal, rotations_from_params

    r = rotations_from_params(torch.randn(4, 28) * 0.2)
    w = torch.randn(10, 32)
    out = fold_rotations({"model.layers.0.self_attn.o_proj.weight": w}, {0: r})
    torch.testing.assert_close(out["model.layers.0.self_attn.o_proj.weight"], w @ block_diagonal(r), atol=1e-6, rtol=1e-6)
    with pytest.raises(ModelError, match="quantized"):
        fold_rotations({"model.layers.0.self_attn.o_proj.weight": torch.zeros(10, 32, dtype=torch.uint8)}, {0: r})


def test_bake_without_gates_is_an_error(tiny_llama, tiny_dataset, tmp_path, capsys):
    run = _trained(tiny_llama, tiny_dataset, tmp_path / "run")
    (run / GATES_FILE).unlink()
    out = tmp_path / "baked"
    rc = main(["bake", "--model_path", str(run), "--output_path", str(out)])
    assert rc == 2
    assert "no SO8T gates file" in capsys.readouterr().err
    assert not out.exists()


def test_failed_verification_writes_nothing(tiny_llama, tiny_dataset, tmp_path):
    run = _trained(tiny_llama, tiny_dataset, tmp_path / "run")
    _randomise_gates(run, tiny_llama)
    out = tmp_path / "baked"
    with pytest.raises(ModelError, match="verification failed"):
        bake(BakeConfig(model_path=str(run), output_path=str(out), max_abs_logit_delta=1e-12, max_kl=1e-20))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".baked")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bake_on_cuda_without_a_gpu_is_a_clear_error(tiny_llama, tiny_dataset, tmp_path, capsys):
    run = _trained(tiny_llama, tiny_dataset, tmp_path / "run")
    out = tmp_path / "baked"
    rc = main(["bake", "--model_path", str(run), "--output_path", str(out), "--device", "cuda"])
    assert rc == 2 and "no CUDA device is available" in capsys.readouterr().err
    assert not out.exists()
    report = bake(BakeConfig(model_path=str(run), output_path=str(out)))  # auto: the CPU here
    assert report.device == "cpu"
