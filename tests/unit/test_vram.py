"""The VRAM estimate (so8t/training/vram.py, docs/vram.md): published figures, independent counts, consistency.

Every published figure below is cited with where it is printed and the settings it was measured
with; the tolerance of each test is stated and justified next to it. Independent checks compare the
arithmetic with what transformers, peft, bitsandbytes and torch's autograd really allocate for tiny
models built on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from so8t.config import TrainConfig
from so8t.errors import ConfigError, ModelError
from so8t.training.vram import (BITS_PER_WEIGHT, Dtypes, ModelShape, TrainingSetup, dynamic_phases, estimate_peak, gate_params,
                       lora_params, lora_targets, resolved_precision, static_components, training_setup)
from tests.fixtures.memory import LiveBytes, saved_tensor_bytes, storages_of

#: Element sizes of a float32 step on the CPU (the measurements below run there).
CPU_FP32 = Dtypes(residual=4, norm_saved=4, matmul=4, attention=4, lora_input=4, mask=4, logits=4)


def _setup(shape: ModelShape, **kw) -> TrainingSetup:
    base = dict(batch_size=1, seq_len=1024, weights="bf16", other_weight_bytes=2,
                dtypes=Dtypes(residual=2, norm_saved=4, matmul=2, attention=2, lora_input=None, mask=1, logits=2),
                lora_r=16, lora_targets=lora_targets(shape, "all-linear"), lora_layers=tuple(range(shape.layers)),
                lora_dropout=0.05, gated_layers=tuple(range(shape.layers)))
    return TrainingSetup(**{**base, **kw})


PHI35 = ModelShape(hidden=3072, layers=32, intermediate=8192, heads=32, kv_heads=32, head_dim=96, vocab=32064,
                   fused_qkv=True, fused_gate_up=True, model_type="phi3")


# ----------------------------------------------------------------------------- published figures
def test_double_quantization_constants_are_the_qlora_papers():
    """Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv 2305.14314), sec. 3,
    "Double Quantization": the constants cost 32/64 = 0.5 bits per parameter, 8/64 + 32/(64*256) = 0.127
    after double quantization, "a reduction of 0.373 bits per parameter". The paper rounds to 3 decimals,
    so the tolerance is half a unit of the third decimal."""
    assert BITS_PER_WEIGHT["nf4"] - 4 == 0.5
    assert BITS_PER_WEIGHT["nf4-dq"] - 4 == pytest.approx(0.127, abs=0.0005)
    assert BITS_PER_WEIGHT["nf4"] - BITS_PER_WEIGHT["nf4-dq"] == pytest.approx(0.373, abs=0.0005)


LLAMA2 = {  # meta-llama Llama-2 config.json numbers; LitGPT's Llama layout: fused qkv, separate fc_1/fc_2
    "7b": ModelShape(hidden=4096, layers=32, intermediate=11008, heads=32, kv_heads=32, head_dim=128, vocab=32000,
                     fused_qkv=True),
    "13b": ModelShape(hidden=5120, layers=40, intermediate=13824, heads=40, kv_heads=40, head_dim=128, vocab=32000,
                      fused_qkv=True),
}


@pytest.mark.parametrize("size, nf4_gb, nf4_dq_gb", [("7b", 14.14, 13.84), ("13b", 23.14, 22.55)])
def test_double_quantization_saving_matches_litgpt_resource_tables(size, nf4_gb, nf4_dq_gb):
    """Lightning-AI/litgpt, tutorials/resource-tables.md (commit 8641822, A100 40GB, bitsandbytes 0.41.1),
    "Finetuning with LoRA on 1 GPU", Llama 2 rows with micro-batch 1: "Max GPU RAM" (torch.cuda.
    max_memory_allocated / 1e9) with bnb.nf4 and bnb.nf4-dq. The runs differ only in how the 4-bit
    constants are stored, so the difference is the double-quantization saving on the quantized weights.
    Both figures are rounded to 0.01 GB, so their difference is known to +-0.01 GB. (LitGPT also quantizes
    lm_head, 0.006 GB of saving for 7B and 0.008 GB for 13B more than the decoder layers alone: inside
    the rounding.)"""
    shape = LLAMA2[size]
    key = "base weights: decoder Linear layers (4-bit NF4)"
    nf4, nf4_dq = (dict(static_components(shape, _setup(shape, weights=fmt)))[key] for fmt in ("nf4", "nf4-dq"))
    saving_gb = (nf4 - nf4_dq) / 1e9
    assert saving_gb == pytest.approx(nf4_gb - nf4_dq_gb, abs=0.0101)


def _litgpt_lora(size: str, micro_batch: int) -> tuple[ModelShape, TrainingSetup]:
    """LitGPT finetune/lora.py at commit 8641822, read for each setting below:
    bf16-true (weights, LoRA parameters, gradients and AdamW moments all bf16), lora_r 8 on query and value
    of the fused qkv Linear (one dropout of 0.05 on its input), no activation checkpointing on one GPU,
    every sequence padded to the batch's longest and the longest Alpaca example first (1304 Llama-2 tokens,
    "Resource Tables" header), no attention mask (is_causal), lit_gpt/rmsnorm.py without a float32 upcast
    (keeps its bf16 input), and chunked cross-entropy on bf16 logits: the logits and the bf16
    log-probabilities are kept (2 + 2 bytes per logit) and the chunked backward adds little."""
    shape = LLAMA2[size]
    setup = TrainingSetup(
        batch_size=micro_batch, seq_len=1304, weights="bf16", other_weight_bytes=2,
        dtypes=Dtypes(residual=2, norm_saved=2, matmul=2, attention=2, lora_input=None, mask=1, logits=2),
        lora_r=8, lora_targets=("qkv_proj",), lora_layers=tuple(range(shape.layers)), lora_dropout=0.05,
        adapter_bytes=2, optimizer="adamw", loss_bytes=(4.0, 4.0), cuda=True)
    return shape, setup


@pytest.mark.parametrize("size, micro_batch, trainable, max_gpu_ram_gb", [
    ("7b", 1, 4_194_304, 21.30), ("7b", 2, 4_194_304, 29.07), ("13b", 1, 6_553_600, 38.12)])
def test_lora_peak_matches_litgpt_resource_tables(size, micro_batch, trainable, max_gpu_ram_gb):
    """Lightning-AI/litgpt, tutorials/resource-tables.md, "Finetuning with LoRA on 1 GPU", quantization
    None: "Max GPU RAM" 21.30 GB (Llama 2 7B, micro-batch 1), 29.07 GB (micro-batch 2), 38.12 GB (13B,
    micro-batch 1); "Trainable parameters" 4,194,304 and 6,553,600.

    The parameter count must match exactly (it pins LitGPT's LoRA placement). The peak is compared with
    the allocated estimate (max_memory_allocated has no CUDA context) within 15 %, the issue's acceptance
    bar for the GPU check: the estimate models transformers' layers, and LitGPT's differ in details (see
    docs/vram.md, "Checked against"). The estimate comes out 7-11 % low here; the GPU check is to say
    whether that holds for our own layers.
    """
    shape, setup = _litgpt_lora(size, micro_batch)
    assert lora_params(shape, setup) == trainable
    assert estimate_peak(shape, setup).allocated / 1e9 == pytest.approx(max_gpu_ram_gb, rel=0.15)


def test_optimizer_and_gradient_bytes_are_hf_memory_anatomy():
    """huggingface/transformers, docs/source/en/model_memory_anatomy.md, "Anatomy of Model's Memory":
    "8 bytes * number of parameters for normal AdamW", "2 bytes ... for 8-bit AdamW", "4 bytes ... for
    optimizers like SGD with momentum", gradients "4 bytes * number of parameters" (float32 trainable
    parameters, as ours are). Exact: these are definitions, not measurements."""
    shape = PHI35
    n = lora_params(shape, _setup(shape))
    for optimizer, per_param in (("adamw", 8), ("adamw_8bit", 2), ("paged_adamw_8bit", 2), ("sgd", 4)):
        parts = dict(static_components(shape, _setup(shape, optimizer=optimizer, adapter_bytes=4)))
        assert parts[f"LoRA optimizer states ({optimizer})"] == per_param * n
        assert parts["LoRA gradients"] == 4 * n


# ----------------------------------------------------------------------------- independent counts
def _tiny_config(arch: str, **kw):
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    common = dict(vocab_size=kw.pop("vocab", 512), hidden_size=128, intermediate_size=320,
                  num_hidden_layers=kw.pop("layers", 3), num_attention_heads=4, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=1, pad_token_id=0, tie_word_embeddings=kw.pop("tied", False))
    if arch == "phi3":
        return Phi3Config(**common, num_key_value_heads=4, original_max_position_embeddings=512)
    if arch == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2)
    return LlamaConfig(**common, num_key_value_heads=2)


def _tiny_model(cfg):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize("arch, tied", [("llama", False), ("llama", True), ("phi3", False), ("qwen2", False)])
def test_base_parameter_count_equals_the_transformers_model(arch, tied):
    cfg = _tiny_config(arch, tied=tied)
    model = _tiny_model(cfg)
    shape = ModelShape.from_config(cfg.to_dict(), arch)
    decoder_linears = sum(m.weight.numel() for name, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and ".layers." in name)
    assert shape.linear_params() == decoder_linears
    assert shape.linear_params() + shape.other_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, targets, layers", [
    ("phi3", "all-linear", "all"), ("llama", "all-linear", "all"), ("llama", "q_proj,v_proj", "all"),
    ("phi3", "qkv_proj,down_proj", "top:1")])
def test_lora_parameter_count_equals_peft(arch, targets, layers):
    from peft import LoraConfig, get_peft_model

    from so8t.training.layer_spec import resolve_layers

    cfg = _tiny_config(arch)
    shape = ModelShape.from_config(cfg.to_dict(), arch)
    chosen = resolve_layers(layers, shape.layers, "lora_layers")
    names = lora_targets(shape, targets)
    model = get_peft_model(_tiny_model(cfg), LoraConfig(
        r=8, lora_alpha=16, target_modules=list(names), task_type="CAUSAL_LM",
        layers_to_transform=None if layers == "all" else chosen))
    setup = _setup(shape, lora_r=8, lora_targets=names, lora_layers=tuple(chosen))
    assert lora_params(shape, setup) == model.get_nb_trainable_parameters()[0]


def test_lora_targets_are_the_linear_layers_train_finds():
    from so8t.training.train import resolve_lora_targets

    for arch in ("phi3", "llama"):
        cfg = _tiny_config(arch)
        shape = ModelShape.from_config(cfg.to_dict(), arch)
        assert list(lora_targets(shape, "all-linear")) == resolve_lora_targets(_tiny_model(cfg), "all-linear")
    with pytest.raises(ModelError, match=r"lora_target_modules \['q_proj'\] do not exist.*qkv_proj"):
        lora_targets(PHI35, "q_proj")


def test_gate_parameter_count_equals_the_attached_gates():
    from so8t.training.gates import attach_gates, iter_gates

    cfg = _tiny_config("llama")
    model = _tiny_model(cfg)
    attach_gates(model, [0, 2])
    shape = ModelShape.from_config(cfg.to_dict(), "llama")
    assert gate_params(shape, _setup(shape, gated_layers=(0, 2))) == sum(
        g.generators.numel() for _, g in iter_gates(model))


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_storage_equals_what_bitsandbytes_allocates(double_quant):
    """bitsandbytes' own 4-bit quantizer (what transformers' Linear4bit stores) on a 1024 x 768 weight:
    packed codes, absmax, and with double quantization the 8-bit absmax, its float32 constants, code
    book and offset. The formula counts bits per weight; bitsandbytes adds per-tensor constants (a
    256-entry float32 code book, an offset): the tolerance is 2 KiB per tensor."""
    from tests.fixtures.required import require_module

    require_module("bitsandbytes")
    import bitsandbytes.functional as bnbf

    w = torch.randn(1024, 768)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    tensors = [packed, state.absmax]
    if double_quant:
        tensors += [state.state2.absmax, state.state2.code, state.offset]
    stored = sum(t.numel() * t.element_size() for t in tensors)
    expected = w.numel() * BITS_PER_WEIGHT["nf4-dq" if double_quant else "nf4"] / 8
    assert stored == pytest.approx(expected, abs=2048)


# ----------------------------------------------------------------------------- measured on the CPU
def _peft_model(arch: str, vocab: int, dropout: float, lora_layers: str, gates: bool, checkpointing: bool):
    """A tiny model built by so8t.training.train.build_so8t_model (LoRA on every Linear, gates, checkpointing), its setup."""
    from so8t.training.layer_spec import resolve_layers
    from so8t.training.train import build_so8t_model

    cfg = _tiny_config(arch, vocab=vocab)
    shape = ModelShape.from_config(cfg.to_dict(), arch)
    layers = resolve_layers(lora_layers, shape.layers, "lora_layers")
    train_cfg = TrainConfig(base_model="x", dataset="x", output_dir="x", lora_r=8, lora_alpha=16, lora_dropout=dropout,
                            lora_layers=lora_layers, so8t_layers=lora_layers if gates else "none",
                            gradient_checkpointing=checkpointing)
    model, _ = build_so8t_model(_tiny_model(cfg), train_cfg)  # as so8t train builds it
    model.train()
    setup = TrainingSetup(batch_size=2, seq_len=64, weights="fp32", other_weight_bytes=4, dtypes=CPU_FP32, lora_r=8,
                          lora_targets=lora_targets(shape, "all-linear"), lora_layers=tuple(layers),
                          lora_dropout=dropout, gated_layers=tuple(layers) if gates else (),
                          gradient_checkpointing=checkpointing, cuda=False)
    return model, shape, setup


@pytest.mark.parametrize("arch", ["phi3", "llama"])
@pytest.mark.parametrize("dropout, lora_layers, gates", [(0.0, "all", False), (0.05, "all", True), (0.05, "top:1", True)])
def test_kept_activations_equal_what_autograd_saves(arch, dropout, lora_layers, gates):
    """The activation term, tensor by tensor, against the storages autograd really keeps (graph walk) for
    a tiny Llama (GQA) and Phi-3 (fused qkv/gate_up) with peft LoRA, dropout, SO(8) gates, all layers or
    the top one. Tolerance 2 %: the formula leaves out tensors of a few bytes per token (RoPE cos/sin,
    RMSNorm's rsqrt, the gates' 8x8 rotations), about 1 % here and far less at real widths."""
    model, shape, setup = _peft_model(arch, 2048, dropout, lora_layers, gates, checkpointing=False)
    ids = torch.randint(0, shape.vocab, (setup.batch_size, setup.seq_len))
    loss = model(input_ids=ids, labels=ids).loss
    measured = saved_tensor_bytes(loss, storages_of([*model.parameters(), *model.buffers()]))
    kept, _ = dynamic_phases(shape, setup)
    log_probs = 4 * setup.tokens * shape.vocab  # the loss keeps float32 log-probabilities
    assert measured == pytest.approx(sum(b for _, b in kept) + log_probs, rel=0.02)


@pytest.mark.parametrize("arch", ["phi3", "llama"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("vocab", [2048, 256])
def test_peak_equals_the_live_tensor_peak(arch, checkpointing, vocab):
    """The dynamic part of the estimate (allocated minus weights, LoRA and optimizer memory) against the
    peak of tensors alive at once during a real forward and backward pass, without and with gradient
    checkpointing. With a large vocabulary the peak is the loss's (start of backward; within 2 % in
    practice), with a small one it is inside a layer, where the formula's working set (two outputs of the
    widest Linear) approximates the temporaries of one layer: tolerance 10 % (measured: 8 % at most)."""
    model, shape, setup = _peft_model(arch, vocab, 0.05, "all", True, checkpointing)
    ids = torch.randint(0, shape.vocab, (setup.batch_size, setup.seq_len))
    tracker = LiveBytes(storages_of([*model.parameters(), *model.buffers()]))
    with tracker:
        model(input_ids=ids, labels=ids).loss.backward()
    est = estimate_peak(shape, setup)
    dynamic = est.allocated - sum(b for _, b in static_components(shape, setup))
    assert tracker.peak == pytest.approx(dynamic, rel=0.10)


# ----------------------------------------------------------------------------- consistency
def test_peak_grows_with_batch_and_sequence():
    totals = [estimate_peak(PHI35, _setup(PHI35, batch_size=b, seq_len=s, padded=b > 1)).total
              for b, s in ((1, 256), (1, 512), (2, 512), (4, 512), (4, 2048))]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


def test_gradient_checkpointing_lowers_activations_and_nothing_else():
    off = estimate_peak(PHI35, _setup(PHI35, seq_len=2048))
    on = estimate_peak(PHI35, _setup(PHI35, seq_len=2048, gradient_checkpointing=True))
    assert static_components(PHI35, _setup(PHI35)) == static_components(PHI35, _setup(PHI35, gradient_checkpointing=True))
    kept_off = off.part("activations kept for backward (32 layers)")
    kept_on = on.part("checkpointed layer inputs (32 layers)")
    assert 0 < kept_on < kept_off / 20  # one hidden state per layer instead of every saved tensor
    assert on.total < off.total


def test_four_bit_weights_are_about_a_quarter_of_bf16():
    """NF4 with double quantization stores 4.127 bits per weight against bf16's 16: a ratio of 3.88."""
    key = "base weights: decoder Linear layers"
    bf16 = dict(static_components(PHI35, _setup(PHI35)))[f"{key} (bf16)"]
    nf4 = dict(static_components(PHI35, _setup(PHI35, weights="nf4-dq")))[f"{key} (4-bit NF4)"]
    assert bf16 / nf4 == pytest.approx(16 / (4 + 8 / 64 + 32 / (64 * 256)), rel=1e-6)
    assert 3.8 < bf16 / nf4 < 4.0


def test_gradient_accumulation_leaves_the_peak_unchanged():
    cfgs = [TrainConfig(base_model="x", dataset="d", output_dir="o", gradient_accumulation_steps=k) for k in (1, 8, 64)]
    totals = {estimate_peak(PHI35, training_setup(c, PHI35)).total for c in cfgs}
    assert len(totals) == 1


def test_precision_rule_is_the_trainers(monkeypatch):
    """so8t.training.vram mirrors so8t.training.train.resolve_precision's CUDA branch (it must not import torch to plan)."""
    from so8t.training import train

    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        for precision in ("auto", "fp32") + (("bf16",) if bf16 else ()):
            for four_bit in (True, False):
                assert resolved_precision(precision, four_bit, bf16) == train.resolve_precision(precision, True, four_bit)


def test_config_errors_name_the_file_and_every_field():
    with pytest.raises(ConfigError, match=r"c\.json: field 'hidden_size': missing; field 'num_hidden_layers': missing"):
        ModelShape.from_config({"num_attention_heads": 4, "intermediate_size": 8, "vocab_size": 8}, "c.json")
    with pytest.raises(ConfigError, match=r"c\.json: field 'vocab_size': 'many' is not a positive integer"):
        ModelShape.from_config({"hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8,
                                "num_attention_heads": 1, "vocab_size": "many"}, "c.json")
    with pytest.raises(ConfigError, match=r"c\.json: expected a JSON object"):
        ModelShape.from_config([1, 2], "c.json")  # type: ignore[arg-type]
