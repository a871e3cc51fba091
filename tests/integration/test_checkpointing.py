"""Gradient checkpointing (--gradient_checkpointing): the same loss and gradients, gates and all, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from so8t.training.batching import sparse_lm_loss
from so8t.cli import main
from so8t.config import TrainConfig
from so8t.training.data import IGNORE_INDEX
from so8t.training.pet import pet_energy
from so8t.training.train import build_so8t_model, load_base, read_loss_log, train


def _model(path, checkpointing: bool, layers: str):
    cfg = TrainConfig(base_model=str(path), dataset="unused.jsonl", output_dir="unused", lora_r=4, lora_alpha=8,
                      lora_dropout=0.05, lora_layers=layers, so8t_layers=layers, gradient_checkpointing=checkpointing)
    base, _ = load_base(path, cfg)
    model, _ = build_so8t_model(base, cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero gates and LoRA B, so that every trainable tensor gets a real gradient
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.train()


def _step(model, ids, labels, sparse: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """CE + PET of one batch (the full head, or the sparse head on the decoder alone), its gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # LoRA dropout draws the same masks in both runs
    if sparse:
        batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        ce, hidden, _ = sparse_lm_loss(model, batch, None, want_hidden=True)
    else:
        out = model(input_ids=ids, labels=labels, output_hidden_states=True)
        ce, hidden = out.loss, out.hidden_states[-1]
    loss = ce + 0.5 * pet_energy(hidden)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_phi3"])
@pytest.mark.parametrize("layers", ["all", "top:1"])
def test_one_step_has_the_same_loss_and_gradients_with_checkpointing(request, fixture, layers):
    """LoRA and gates on every layer, or on the top one only (the layer below then needs no backward pass:
    the embeddings' output must not require a gradient, which transformers and peft switch on)."""
    path = request.getfixturevalue(fixture)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 500, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :10] = IGNORE_INDEX  # a prompt without loss, as in chat records
    plain, ckpt = _model(path, False, layers), _model(path, True, layers)
    assert not ckpt.get_input_embeddings()(ids).requires_grad
    for sparse in (False, True):
        loss_a, grads_a = _step(plain, ids, labels, sparse)
        loss_b, grads_b = _step(ckpt, ids, labels, sparse)
        assert loss_b == pytest.approx(loss_a, rel=1e-6)
        assert grads_a.keys() == grads_b.keys()
        assert any("generators" in k for k in grads_a) and len(grads_a) == sum(
            p.requires_grad for p in plain.parameters())
        for k in grads_a:
            torch.testing.assert_close(grads_b[k], grads_a[k], rtol=1e-5, atol=1e-7)
            assert grads_a[k].abs().sum() > 0, k


def test_training_with_checkpointing_equals_training_without(tiny_llama, tiny_dataset, tmp_path):
    kw = dict(base_model=str(tiny_llama), dataset=str(tiny_dataset), batch_size=1, gradient_accumulation_steps=2,
              max_steps=3, save_steps=3, max_length=96, learning_rate=5e-3, pet_lambda=0.5, seed=7, lora_r=4,
              lora_alpha=8)
    ref = train(TrainConfig(output_dir=str(tmp_path / "ref"), **kw))
    out = train(TrainConfig(output_dir=str(tmp_path / "ckpt"), gradient_checkpointing=True, **kw))
    a, b = read_loss_log(ref), read_loss_log(out)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert rb["ce_loss"] == pytest.approx(ra["ce_loss"], rel=1e-5)
        assert rb["pet_loss"] == pytest.approx(ra["pet_loss"], rel=1e-4, abs=1e-9)
    for name in ("adapter_model.safetensors", "so8t_gates.safetensors"):
        wa, wb = load_file(str(ref / name)), load_file(str(out / name))
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    assert json.loads((out / "so8t_train_config.json").read_text())["config"]["gradient_checkpointing"] is True


def test_cli_flag_and_its_refusal_with_a_shared_prefix(tiny_llama, tiny_dataset, tmp_path, capsys):
    args = ["train", "--base_model", str(tiny_llama), "--dataset", str(tiny_dataset), "--max_steps", "1",
            "--save_steps", "1", "--max_length", "64", "--lora_r", "4", "--lora_alpha", "8", "--gradient_checkpointing"]
    rc = main([*args, "--output_dir", str(tmp_path / "refused"), "--batch_size", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "gradient_checkpointing with share_prompt_prefix and batch_size 2" in err
    assert "--no-share_prompt_prefix" in err and not (tmp_path / "refused").exists()
    out = tmp_path / "ok"
    assert main([*args, "--output_dir", str(out), "--batch_size", "2", "--no-share_prompt_prefix"]) == 0
    assert len(read_loss_log(out)) == 1


def test_4bit_with_checkpointing_trains(tiny_llama, tiny_dataset, tmp_path):
    """QLoRA's path (prepare_model_for_kbit_training, then checkpointing): trains, gates move."""
    from tests.fixtures.required import require_module

    require_module("bitsandbytes")
    out = train(TrainConfig(base_model=str(tiny_llama), dataset=str(tiny_dataset), output_dir=str(tmp_path / "q"),
                            load_in_4bit=True, gradient_checkpointing=True, max_steps=2, save_steps=2, max_length=64,
                            lora_r=4, lora_alpha=8, learning_rate=5e-3))
    assert [r["step"] for r in read_loss_log(out)] == [1, 2]
    assert all(float(t.abs().max()) > 0 for t in load_file(str(out / "so8t_gates.safetensors")).values())
