"""The VRAM preflight (so8t/training/preflight.py): config lookup, the remedy order, the runbook's case, the dry run."""

from __future__ import annotations

import json
import shutil

import pytest

from so8t.cli import main
from so8t.config import TrainConfig
from so8t.errors import ConfigError, ModelError
from so8t.training.preflight import MODEL_CONFIGS, next_memory_remedy, plan_fit, read_model_shape
from so8t.training.vram import GIB, estimate_peak, training_setup

#: The runbook's training command (docs: runbook "Step 2: SO8T QLoRA学習"), base model by its shipped config.
RUNBOOK = ["--base_model", "phi-3.5-mini-instruct", "--dataset", "data/train.jsonl", "--lora_r", "16",
           "--lora_alpha", "32", "--lora_dropout", "0.05", "--batch_size", "1", "--gradient_accumulation_steps", "8",
           "--learning_rate", "2e-4", "--num_epochs", "3", "--load_in_4bit"]
RTX_3060 = 12 * GIB


def _runbook_cfg(**kw) -> TrainConfig:
    base = dict(base_model="phi-3.5-mini-instruct", dataset="data/train.jsonl", output_dir="out", lora_r=16,
                lora_alpha=32, lora_dropout=0.05, batch_size=1, gradient_accumulation_steps=8, learning_rate=2e-4,
                num_epochs=3, load_in_4bit=True)
    return TrainConfig(**{**base, **kw})


def test_the_shipped_phi35_config_is_phi35_minis_shape():
    """Phi-3.5-mini: 3.8 B parameters (microsoft/Phi-3.5-mini-instruct model card); 3,821,079,552 is what
    the architecture numbers give (transformers' Phi3ForCausalLM with this config)."""
    shape = read_model_shape("phi-3.5-mini-instruct")
    assert (shape.hidden, shape.layers, shape.intermediate, shape.heads, shape.kv_heads, shape.vocab) == (
        3072, 32, 8192, 32, 32, 32064)
    assert shape.fused_qkv and shape.fused_gate_up and not shape.tied
    assert shape.linear_params() + shape.other_params() == 3_821_079_552


def test_runbook_settings_need_gradient_checkpointing_on_a_12gb_card():
    """The runbook's case, pinned (docs/vram.md, "The runbook's case"). With --load_in_4bit, precision auto
    trains without autocast (so8t.training.train.resolve_precision), prepare_model_for_kbit_training makes the
    embeddings float32 and bitsandbytes returns float32 outputs for float32 inputs: every kept activation
    is float32. At 1024 tokens each of the 32 layers keeps 284,032 bytes per token, 8.7 GiB in all, on
    top of 2.9 GiB of 4-bit weights, float32 embeddings and head, LoRA and AdamW state, and 0.4 GiB for
    the loss: 11.9 GiB allocated before the CUDA context, which does not fit next to it on a 12 GiB card.
    Batch size is already 1, so the first remedy is gradient checkpointing: one hidden state per layer
    kept, the estimate under 5 GiB."""
    report = plan_fit(_runbook_cfg(), read_model_shape("phi-3.5-mini-instruct"), RTX_3060)
    est = report.estimate
    assert report.fits is False and est.total > RTX_3060
    assert est.part("activations kept for backward (32 layers)") > 8 * GIB and est.allocated > 11.5 * GIB
    remedy, after = report.first
    assert remedy.step == "gradient-checkpointing" and remedy.changes == {"gradient_checkpointing": (False, True)}
    assert after.total < 5 * GIB and len(report.steps) == 1
    # with checkpointing, twice the runbook's length still fits
    long = plan_fit(_runbook_cfg(gradient_checkpointing=True, max_length=2048), report.shape, RTX_3060)
    assert long.fits is True and not long.steps


def test_remedies_follow_the_runbook_order_and_each_lowers_the_estimate():
    shape = read_model_shape("phi-3.5-mini-instruct")
    cfg = _runbook_cfg(batch_size=4, gradient_accumulation_steps=2, max_length=256, load_in_4bit=False)
    steps, before = [], estimate_peak(shape, training_setup(cfg, shape)).total
    while (remedy := next_memory_remedy(cfg)) is not None:
        cfg = remedy.apply(cfg)
        after = estimate_peak(shape, training_setup(cfg, shape)).total
        steps.append(remedy.step)
        assert after < before, remedy.step
        before = after
    assert steps == ["batch-1+accumulation", "gradient-checkpointing", "4-bit", "max-length", "max-length"]
    assert cfg.batch_size * cfg.gradient_accumulation_steps == 8 and cfg.max_length == 64


def test_plan_stops_at_the_first_remedy_that_fits():
    shape = read_model_shape("phi-3.5-mini-instruct")
    cfg = _runbook_cfg(batch_size=4, load_in_4bit=False)
    full = plan_fit(cfg, shape, 1)  # nothing fits in one byte: every remedy is listed
    names = [r.step for r, _ in full.steps]
    assert names[:3] == ["batch-1+accumulation", "gradient-checkpointing", "4-bit"] and full.fits is False
    card = full.steps[1][1].total  # exactly what batch 1 + checkpointing needs
    report = plan_fit(cfg, shape, card)
    assert [r.step for r, _ in report.steps] == ["batch-1+accumulation", "gradient-checkpointing"]
    assert plan_fit(cfg, shape, report.estimate.total).steps == ()  # fits as is: nothing to change


def test_checkpointing_with_a_shared_prefix_needs_batch_one():
    with pytest.raises(ValueError, match=r"gradient_checkpointing with share_prompt_prefix and batch_size 2"):
        _runbook_cfg(gradient_checkpointing=True, batch_size=2)
    assert _runbook_cfg(gradient_checkpointing=True, batch_size=2, share_prompt_prefix=False).batch_size == 2
    assert _runbook_cfg(gradient_checkpointing=True, batch_size=1).share_prompt_prefix is True


# ----------------------------------------------------------------------------- where the config comes from
def test_a_directory_holding_only_config_json_is_enough(tmp_path):
    shutil.copy(MODEL_CONFIGS / "phi-3.5-mini-instruct.json", tmp_path / "config.json")
    assert read_model_shape(str(tmp_path)) == read_model_shape(str(tmp_path / "config.json"))
    assert read_model_shape(str(tmp_path)).hidden == 3072


def test_an_unprepared_embedded_base_uses_its_shipped_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    shape = read_model_shape("smollm2")
    assert shape.source.endswith("smollm2.json") and (shape.hidden, shape.layers, shape.tied) == (576, 30, True)
    assert not (tmp_path / "cache").exists()  # looked up, not prepared


@pytest.mark.parametrize("content, pattern", [
    (None, r"no config\.json"),
    ("{", r"config\.json:1: not valid JSON"),
    ("[]", r"config\.json: expected a JSON object"),
    (json.dumps({"model_type": "llama", "hidden_size": 64}),
     r"config\.json: field 'num_attention_heads': missing; field 'num_hidden_layers': missing"),
])
def test_bad_configs_are_one_error_naming_file_and_field(tmp_path, content, pattern):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises((ConfigError, ModelError), match=pattern):
        read_model_shape(str(tmp_path))
    with pytest.raises(ModelError, match=r"'no-such-model' not found.*phi-3\.5-mini-instruct"):
        read_model_shape("no-such-model")


# ----------------------------------------------------------------------------- so8t train --dry_run
def test_dry_run_prints_the_runbook_estimate_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", *RUNBOOK, "--output_dir", str(out), "--dry_run", "--gpu_memory_gb", "12"])
    printed = capsys.readouterr().out
    assert rc == 0 and not out.exists()
    report = plan_fit(_runbook_cfg(output_dir=str(out)), read_model_shape("phi-3.5-mini-instruct"), RTX_3060)
    assert f"card: {report.verdict()}" in printed
    assert "does not fit; change gradient_checkpointing False -> True first" in printed
    assert report.estimate.table() in printed


def test_dry_run_without_a_card_prints_the_estimate(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", *RUNBOOK, "--output_dir", str(tmp_path / "o"), "--gradient_checkpointing", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "card: estimated peak" in printed and "no card to compare with" in printed


def test_gpu_memory_without_dry_run_is_refused(tmp_path, capsys):
    rc = main(["train", *RUNBOOK, "--output_dir", str(tmp_path / "o"), "--gpu_memory_gb", "12"])
    assert rc == 2 and "--gpu_memory_gb is for --dry_run" in capsys.readouterr().err
