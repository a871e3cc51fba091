"""The demo's recipes: valid pipeline parameters, the default gate untouched, held-out showcase records."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", ["demo", "full"])
def test_recipes_train_on_real_data_and_keep_the_default_gate(recipe, tmp_path):
    from release.demo import demo_params
    from so8t.calibrate.promotion_gate import GateConfig

    p = demo_params(tmp_path, recipe)
    assert p.gate == GateConfig()  # a model is promoted because it is good, never because the gate moved
    assert Path(p.train.dataset).name == "decision_train.jsonl"
    assert Path(p.calibration.val_data).name == "decision_val.jsonl"
    assert Path(p.evaluation.data).name == "decision_test.jsonl"
    assert p.train.label_loss == "label_token" and p.train.share_prompt_prefix
    assert demo_params(tmp_path, recipe, max_steps=7).train.max_steps == 7


def test_showcase_picks_held_out_records_of_each_kind():
    import json

    from release.demo import SHOWCASE, showcase_records

    test = REPO / "data" / "decision_test.jsonl"
    picked = showcase_records(test)
    assert [(r["source"], r["label"]) for r in picked] == list(SHOWCASE)
    train = {json.loads(line)["text"] for line in (REPO / "data" / "decision_train.jsonl").open(encoding="utf-8")}
    assert not any(r["text"] in train for r in picked)
