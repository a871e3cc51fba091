"""docs/multi-gpu.md: the FSDP memory table is what so8t.training.vram computes, and its counts are right."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from so8t.config import TrainConfig
from so8t.training.preflight import read_model_shape
from so8t.training.vram import (GIB, estimate_fsdp_peak, estimate_peak, gate_params, layer_weight_params, lora_params,
                                root_unit_params, static_components, training_setup)

DOC = Path(__file__).resolve().parents[2] / "docs" / "multi-gpu.md"
WORLDS = (2, 4, 8)
#: doc row -> the estimate components it sums (by name prefix)
GROUPS = {
    "decoder Linear weights (bf16)": ("base weights: decoder",),
    "embeddings, LM head, norms (bf16)": ("base weights: embeddings",),
    "LoRA parameters + gradients + AdamW states": ("LoRA",),
    "SO(8) gates": ("SO(8)",),
    "all-gathered: root unit and 2 decoder layers": ("all-gathered",),
    "checkpointed layer inputs, final norm, PET": ("checkpointed", "final norm"),
}


def _setup():
    shape = read_model_shape("llama-3.1-8b")
    # the doc's command: defaults plus --batch_size 1 --max_length 2048 --gradient_checkpointing
    cfg = TrainConfig(base_model="llama-3.1-8b", dataset="d.jsonl", output_dir="o", batch_size=1, max_length=2048,
                      gradient_checkpointing=True)
    return shape, training_setup(cfg, shape)


def _doc_table() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"\**[\d.]+\**", cells[1]):
            rows[cells[0].replace("*", "")] = [c.replace("*", "") for c in cells[1:]]
    return rows


def test_the_docs_table_is_the_code():
    shape, setup = _setup()
    ests = [estimate_peak(shape, setup)] + [estimate_fsdp_peak(shape, setup, n) for n in WORLDS]
    table = _doc_table()
    for row, prefixes in GROUPS.items():
        assert table[row] == [f"{sum(b for n, b in e.components if n.startswith(prefixes)) / GIB:.3f}" for e in ests], row
    phase = next(k for k in table if k.startswith("largest phase"))
    assert all(e.peak_phase == "start of backward" for e in ests)
    assert table[phase] == [f"{e.components[-1][1] / GIB:.3f}" for e in ests]
    assert table["allocated"] == [f"{e.allocated / GIB:.2f}" for e in ests]
    assert table["total (+ CUDA context, slack)"] == [f"{e.total / GIB:.2f}" for e in ests]
    assert len(table) == len(GROUPS) + 3  # no row the code does not give


def test_the_counts_against_an_independent_count():
    """Llama-3.1-8B counted by hand from its published shape, not through ModelShape.linears()."""
    shape, setup = _setup()
    h, i, kv, V, L = 4096, 14336, 8 * 128, 128256, 32
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i  # q, k and v, o, gate/up/down
    assert shape.linear_params() == L * per_layer == 6_979_321_856
    assert layer_weight_params(shape) == per_layer + 2 * h == 218_112_000
    assert root_unit_params(shape) == 2 * V * h + h
    assert lora_params(shape, setup) == 16 * L * ((h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h)) == 41_943_040
    assert gate_params(shape, setup) == L * (h // 8) * 28 == 458_752
    for n in WORLDS:
        est = estimate_fsdp_peak(shape, setup, n)
        # every static term is the single-GPU one over n (rounding to a byte)
        sharded = {name.rsplit(" (1/", 1)[0]: b for name, b in est.components if "(1/" in name}
        for name, b in static_components(shape, setup):
            assert abs(sharded[name] - b / n) <= 1
        assert est.part("all-gathered root unit: embeddings, LM head, final norm") == 2 * (2 * V * h + h)
        gathered_layers = next(b for name, b in est.components if name.startswith("all-gathered decoder layers"))
        lora_per_layer = 16 * (9 * h + 2 * kv + 3 * i)  # r x (in + out) over q, k, v, o, gate, up, down
        assert gathered_layers == 2 * (2 * (per_layer + 2 * h) + 4 * lora_per_layer)  # bf16 weights, float32 LoRA


def test_fsdp_estimate_refuses_what_it_cannot_plan():
    shape, setup = _setup()
    from so8t.errors import ConfigError

    with pytest.raises(ConfigError, match="FSDP over 0 GPUs"):
        estimate_fsdp_peak(shape, setup, 0)
    import dataclasses

    with pytest.raises(ConfigError, match="4-bit"):
        estimate_fsdp_peak(shape, dataclasses.replace(setup, weights="nf4-dq"), 2)
    one = estimate_fsdp_peak(shape, setup, 1)  # one "shard" is the whole: only the gathered copies are extra
    assert one.allocated - estimate_peak(shape, setup).allocated == sum(
        b for n, b in one.components if n.startswith("all-gathered"))
