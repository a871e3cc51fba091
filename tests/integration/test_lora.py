"""so8t.training.lora (the bake's own adapter reader) against peft, the implementation training used."""

from __future__ import annotations

import json

import pytest
import torch

from so8t.export.bake import BakeConfig, bake, read_probes
from so8t.export.logit_compare import compare_logit_sets as compare_logits
from so8t.cli import main
from so8t.errors import ModelError
from so8t.training.lora import attach_unmerged, merge_into, read_adapter


def _random_adapter(base, out, seed=0, **lora_kwargs):
    """A peft LoRA adapter with random non-zero A and B, saved to ``out``; returns peft's model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                           LoraConfig(target_modules="all-linear", **lora_kwargs))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(std=0.05)
    model.save_pretrained(str(out))
    return model.eval()


CASES = {
    "plain": dict(r=4, lora_alpha=8),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
    "patterns": dict(r=4, lora_alpha=8, rank_pattern={"o_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
                     alpha_pattern={"q_proj": 3, "down_proj": 20}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_phi3"])
def test_unmerged_and_merged_match_peft(request, fixture, case, tmp_path):
    from transformers import AutoModelForCausalLM

    base = request.getfixturevalue(fixture)
    peft_model = _random_adapter(base, tmp_path / "adapter", **CASES[case])
    modules = read_adapter(tmp_path / "adapter")
    expected = {n.removeprefix("base_model.model.").removesuffix(".lora_A")
                for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert {m.name for m in modules} == expected
    # every module's scaling is peft's own
    peft_layers = dict(peft_model.base_model.model.named_modules())
    for m in modules:
        assert m.scaling == pytest.approx(peft_layers[m.name].scaling["default"], rel=1e-12), m.name

    ids = torch.randint(3, 500, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = peft_model(ids).logits
        mine = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
        hooks = attach_unmerged(mine, modules)
        unmerged = mine(ids).logits
        for h in hooks:
            h.remove()
        assert merge_into(mine, modules) == len(modules)
        merged = mine(ids).logits
        peft_merged = peft_model.merge_and_unload()(ids).logits
    no_lora = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    with torch.no_grad():
        assert (no_lora(ids).logits - want).abs().max() > 1e-2  # the adapter matters
    for got in (unmerged, merged):
        cmp = compare_logits(list(want), list(got))
        assert cmp["max_abs_logit_delta"] <= 1e-4 and cmp["mean_kl"] <= 1e-8
    torch.testing.assert_close(merged, peft_merged, atol=1e-4, rtol=1e-4)


def test_tied_weights_stay_tied_after_merge(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    _random_adapter(tiny_llama, tmp_path / "adapter", r=4, lora_alpha=8)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    params_before = {n: id(p) for n, p in m.named_parameters()}
    merge_into(m, read_adapter(tmp_path / "adapter"))
    assert {n: id(p) for n, p in m.named_parameters()} == params_before


@pytest.mark.parametrize("field,value", [("use_dora", True), ("bias", "lora_only"), ("modules_to_save", ["lm_head"]),
                                         ("fan_in_fan_out", True), ("peft_type", "IA3")])
def test_unsupported_adapter_options_are_refused(tiny_llama, tmp_path, field, value):
    _random_adapter(tiny_llama, tmp_path / "adapter", r=4, lora_alpha=8)
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=field if field != "peft_type" else "only LoRA"):
        read_adapter(tmp_path / "adapter")


def test_adapter_for_another_base_is_refused(tiny_llama, tiny_phi3, tmp_path):
    from transformers import AutoModelForCausalLM

    _random_adapter(tiny_phi3, tmp_path / "adapter", r=4, lora_alpha=8)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    with pytest.raises(ModelError, match="LoRA module .*(missing|does not match)"):
        merge_into(m, read_adapter(tmp_path / "adapter"))


def test_rank_mismatch_and_half_pairs_are_refused(tiny_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    _random_adapter(tiny_llama, tmp_path / "adapter", r=4, lora_alpha=8)
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(ModelError, match="rank 4 but the config says r=8"):
        read_adapter(tmp_path / "adapter")
    cfg_path.write_text(json.dumps(cfg))
    dropped = next(k for k in tensors if k.endswith("lora_B.weight"))
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(path))
    with pytest.raises(ModelError, match="not both lora_A and lora_B"):
        read_adapter(tmp_path / "adapter")


def test_probe_file(tmp_path):
    p = tmp_path / "probes.txt"
    p.write_text("first prompt\n\n  \nsecond prompt\n", encoding="utf-8")
    assert read_probes(str(p)) == ("first prompt", "second prompt")
    p.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ModelError, match="no non-blank line"):
        read_probes(str(p))
    with pytest.raises(ModelError, match="cannot read the probe file"):
        read_probes(str(tmp_path / "missing.txt"))


def test_bake_with_a_probe_file(tiny_llama, tiny_dataset, tmp_path, capsys):
    from tests.integration.test_bake import _randomise_gates, _trained

    run = _trained(tiny_llama, tiny_dataset, tmp_path / "run")
    _randomise_gates(run, tiny_llama)
    probes = tmp_path / "probes.txt"
    probes.write_text("calibration rotation gate\n較正 回転 ゲート\nmodel safety request answer\n", encoding="utf-8")
    report = bake(BakeConfig(model_path=str(run), output_path=str(tmp_path / "baked"), probe_file=str(probes)))
    assert report.passed and report.probe_count == 3
    rc = main(["bake", "--model_path", str(run), "--output_path", str(tmp_path / "baked2"),
               "--probe_file", str(tmp_path / "nope.txt")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("nope.txt: cannot read the probe file" in line for line in err)
    assert not (tmp_path / "baked2").exists()
