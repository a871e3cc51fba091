"""A custom decision prompt travels train -> bake -> calibrate, and a mismatch is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from so8t.cli import main
from so8t.config import TrainConfig
from so8t.decision import DEFAULT_DECISION_PROMPT, PROMPT_FILE, DecisionPrompt, write_decision_prompt
from so8t.training.train import train
from tests.conftest import write_jsonl
from tests.fixtures.required import require_module

require_module("llama_cpp")
REPO = Path(__file__).resolve().parents[2]
CUSTOM = DecisionPrompt(system="Review the request. Answer ALLOW, ESCALATE or DENY.", user_template="Request: {text}\nDecision:")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))


def _cfg(tiny_llama, data, out, prompt_file, **kw):
    return TrainConfig(base_model=str(tiny_llama), dataset=str(data), output_dir=str(out), batch_size=2,
                       gradient_accumulation_steps=1, max_steps=2, save_steps=1, max_length=96, learning_rate=1e-2,
                       lora_r=4, lora_alpha=8, seed=1, decision_prompt=str(prompt_file), **kw)


def test_training_records_the_prompt_and_bake_carries_it(tiny_llama, tiny_dataset, tmp_path, capsys):
    prompt_file = write_decision_prompt(CUSTOM, tmp_path)
    run = train(_cfg(tiny_llama, tiny_dataset, tmp_path / "run", prompt_file))
    assert json.loads((run / PROMPT_FILE).read_text()) == CUSTOM.model_dump()
    assert json.loads((run / "so8t_train_config.json").read_text())["decision_prompt_sha256"] == CUSTOM.sha256()

    # resuming with another prompt is refused before anything is written
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"system": "Something else.", "user_template": "{text}"}))
    before = sorted(p.name for p in run.iterdir())
    rc = main(["train", "--base_model", str(tiny_llama), "--dataset", str(tiny_dataset), "--output_dir", str(run),
               "--max_steps", "3", "--save_steps", "1", "--max_length", "96", "--decision_prompt", str(other),
               "--resume_from_checkpoint", "latest"])
    err = capsys.readouterr().err
    assert rc == 2 and "another decision prompt" in err
    assert sorted(p.name for p in run.iterdir()) == before

    # the baked model carries the prompt (bake from a checkpoint finds it in the run directory)
    ckpt = sorted(run.glob("checkpoint-*"))[-1]
    assert main(["bake", "--model_path", str(ckpt), "--output_path", str(tmp_path / "baked")]) == 0
    assert json.loads((tmp_path / "baked" / PROMPT_FILE).read_text()) == CUSTOM.model_dump()


def test_calibrate_uses_the_prompt_beside_the_model_or_the_given_one(tiny_llama, tmp_path, capsys):
    from so8t.export.gguf import convert_to_gguf

    src = convert_to_gguf(tiny_llama, tmp_path / "g", ["Q8_0"], name="tinyprompt", fidelity=False).path("Q8_0")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    model = model_dir / src.name
    shutil.copy(src, model)
    rows = [json.loads(line) for line in open(REPO / "data" / "safety_val.jsonl", encoding="utf-8")]
    data = write_jsonl(tmp_path / "val.jsonl", [r for lab in ("ALLOW", "ESCALATE", "DENY") for r in
                                                [r for r in rows if r["label"] == lab][:4]])

    def calibrate(out, *extra):
        rc = main(["calibrate", "--model", str(model), "--val_data", str(data), "--output_dir", str(out), *extra])
        assert rc == 0
        return json.loads((out / "calibration_results.json").read_text())["scoring"]

    default = calibrate(tmp_path / "c1")
    assert default["decision_system"] == DEFAULT_DECISION_PROMPT.system
    assert default["decision_prompt_sha256"] == DEFAULT_DECISION_PROMPT.sha256()
    write_decision_prompt(CUSTOM, model_dir)
    beside = calibrate(tmp_path / "c2")
    assert beside["decision_system"] == CUSTOM.system and beside["decision_user_template"] == CUSTOM.user_template
    assert CUSTOM.system in beside["prompt_example"] and not beside["from_cache"]
    assert beside["cache_key"] != default["cache_key"]
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps({"system": "Explicit policy.", "user_template": "{text}"}))
    given = calibrate(tmp_path / "c3", "--decision_prompt", str(explicit))
    assert given["decision_system"] == "Explicit policy."

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"system": "x", "user_template": "no field"}))
    capsys.readouterr()
    rc = main(["calibrate", "--model", str(model), "--val_data", str(data), "--output_dir", str(tmp_path / "c4"),
               "--decision_prompt", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and any(f"{bad}: field 'user_template'" in line for line in err)
    assert not (tmp_path / "c4").exists()
