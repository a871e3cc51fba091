"""The runbook checklists (tasks/checklists.py): each item holds or fails on real files, and says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from so8t.config import TrainConfig
from so8t.training.train import CHECKPOINT_MARKER, CONFIG_FILE, LOSS_LOG
from release.checklists import after_calibration_items, after_conversion_items, after_training_items, before_inference_items, before_training_items, checklist_markdown


def _by_tag(items) -> dict[str, object]:
    """Items keyed by the English tag in parentheses at the end of the runbook's wording."""
    return {i.item.rsplit("(", 1)[1].rstrip(")"): i for i in items}


def test_before_training_counts_records_and_names_what_is_missing(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "x", "output": "y"}\n\n{"instruction": "z", "output": "w"}\n')
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    ok = _by_tag(before_training_items(TrainConfig(base_model=str(model), dataset=str(data), output_dir=str(tmp_path / "o"))))
    assert ok["dataset prepared"].ok is True and ok["dataset prepared"].detail == "2 records in 1 file(s)"
    assert ok["base model available"].ok is True and "config.json found" in ok["base model available"].detail
    assert ok["environment set up"].ok is True

    missing = tmp_path / "missing.jsonl"
    (model / "config.json").unlink()
    bad = _by_tag(before_training_items(TrainConfig(base_model=str(model), dataset=f"{data},{missing}",
                                                    output_dir=str(tmp_path / "o"))))
    assert bad["dataset prepared"].ok is False and str(missing) in bad["dataset prepared"].detail
    assert bad["base model available"].ok is False and "no config.json" in bad["base model available"].detail

    embedded = _by_tag(before_training_items(TrainConfig(base_model="smollm2", dataset=str(data), output_dir=str(tmp_path / "o"))))
    assert embedded["base model available"].ok is True
    unknown = _by_tag(before_training_items(TrainConfig(base_model="no-such-model", dataset=str(data), output_dir=str(tmp_path / "o"))))
    assert unknown["base model available"].ok is False and "neither a directory" in unknown["base model available"].detail


def test_gpu_memory_line_compares_the_vram_estimate_with_free_memory(tmp_path, monkeypatch):
    import shutil

    import torch

    from so8t.training.preflight import MODEL_CONFIGS
    from so8t.training.vram import GIB, ModelShape, estimate_peak, training_setup

    model = tmp_path / "phi"
    model.mkdir()
    shutil.copy(MODEL_CONFIGS / "phi-3.5-mini-instruct.json", model / "config.json")  # a directory with config.json only
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "x", "output": "y"}\n')
    cfg = TrainConfig(base_model=str(model), dataset=str(data), output_dir=str(tmp_path / "o"), load_in_4bit=True)
    shape = ModelShape.from_config(json.loads((model / "config.json").read_text()), "phi")
    need = estimate_peak(shape, training_setup(cfg, shape)).total

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = _by_tag(before_training_items(cfg))["GPU memory"]
    assert cpu.ok is None and cpu.detail == f"no CUDA device: training on CPU (on a CUDA GPU: estimated peak {need / GIB:.1f} GiB)"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (need + GIB, 24 * GIB))
    roomy = _by_tag(before_training_items(cfg))["GPU memory"]
    assert roomy.ok is True and roomy.detail.endswith(f"GiB free: fits") and f"{need / GIB:.1f} GiB vs" in roomy.detail
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (need - GIB, 24 * GIB))
    tight = _by_tag(before_training_items(cfg))["GPU memory"]
    assert tight.ok is False and "does not fit; change gradient_checkpointing False -> True first" in tight.detail

    (model / "config.json").write_text("{}")  # no estimate: the old rule, more than 2 GB free, and why
    fallback = _by_tag(before_training_items(cfg))["GPU memory"]
    assert fallback.ok is (need - GIB > 2e9) and "no VRAM estimate" in fallback.detail and "hidden_size" in fallback.detail


def _run_dir(root: Path, steps: list[int], losses: list[float], global_step: int, complete: bool = True) -> Path:
    out = root / "run"
    out.mkdir(parents=True)
    for s in steps:
        (out / f"checkpoint-{s}").mkdir()
        if complete or s != steps[-1]:
            (out / f"checkpoint-{s}" / CHECKPOINT_MARKER).write_text("{}")
    (out / LOSS_LOG).write_text("".join(json.dumps({"step": i + 1, "ce_loss": v}) + "\n" for i, v in enumerate(losses)))
    (out / CONFIG_FILE).write_text(json.dumps({"global_step": global_step}))
    for f in ("adapter_model.safetensors", "adapter_config.json", "so8t_gates.safetensors"):
        (out / f).write_bytes(b"x")
    return out


def test_after_training_checks_checkpoints_loss_and_saved_files(tmp_path):
    good = _by_tag(after_training_items(_run_dir(tmp_path / "a", [4, 8], [2.0, 1.5, 1.2], global_step=8)))
    assert all(i.ok for i in good.values()), good
    assert good["loss decreasing"].detail == "CE 2.0000 -> 1.2000 over 3 logged steps"

    run = _run_dir(tmp_path / "b", [4, 8], [1.0, 1.4], global_step=12, complete=False)
    (run / "so8t_gates.safetensors").unlink()
    bad = _by_tag(after_training_items(run))
    assert bad["loss decreasing"].ok is False
    assert bad["final checkpoint saved"].ok is False  # checkpoint-8 is incomplete: the newest complete is 4, not 12
    assert bad["checkpoints saved"].detail == "checkpoint-4"
    assert bad["model saved"].ok is False and "so8t_gates" not in bad["model saved"].detail

    empty = _by_tag(after_training_items(tmp_path / "nothing"))
    assert empty["checkpoints saved"].ok is False and empty["loss decreasing"].ok is None  # no log: not applicable


@pytest.fixture
def converted(tmp_path) -> tuple[Path, Path]:
    baked = tmp_path / "baked"
    baked.mkdir()
    (baked / "bake_report.json").write_text(json.dumps({"passed": True, "max_abs_logit_delta": 1.2e-4}))
    out = tmp_path / "gguf"
    out.mkdir()
    files = [{"quant": "F16", "file": "m_f16.gguf", "size_bytes": 1000}, {"quant": "Q8_0", "file": "m_Q8_0.gguf", "size_bytes": 540}]
    for f in files:
        (out / f["file"]).write_bytes(b"g")
    (out / "gguf_report.json").write_text(json.dumps({"files": files}))
    return baked, out / "gguf_report.json"


def test_after_conversion_checks_bake_files_quants_and_sizes(converted):
    baked, report = converted
    ok = _by_tag(after_conversion_items(baked, report, ["Q8_0"]))
    assert all(i.ok for i in ok.values()), ok
    assert "1.20e-04" in ok["baked model"].detail

    missing_quant = _by_tag(after_conversion_items(baked, report, ["Q8_0", "Q4_K_M"]))
    assert missing_quant["quantization done"].ok is False and "Q4_K_M: missing" in missing_quant["quantization done"].detail

    doc = json.loads(report.read_text())
    doc["files"][1]["size_bytes"] = 2000  # a "quantized" file larger than F16 is not plausible
    report.write_text(json.dumps(doc))
    (report.parent / "m_Q8_0.gguf").unlink()
    (baked / "bake_report.json").write_text(json.dumps({"passed": False, "max_abs_logit_delta": 3.0}))
    bad = _by_tag(after_conversion_items(baked, report, ["Q8_0"]))
    assert bad["file sizes plausible"].ok is False and bad["quantization done"].ok is False
    assert bad["baked model"].ok is False


def test_after_calibration_compares_with_the_targets(tmp_path):
    res = tmp_path / "calibration_results.json"
    res.write_text(json.dumps({"temperature": 1.5, "tau_deny": 0.6, "tau_escalate": 0.3}))
    ok = _by_tag(after_calibration_items(res, ece=0.03, ece_max=0.05, far=0.01, far_max=0.02))
    assert all(i.ok for i in ok.values()), ok
    bad = _by_tag(after_calibration_items(tmp_path / "none.json", ece=0.06, ece_max=0.05, far=None, far_max=0.02))
    assert [bad[k].ok for k in ("results saved", "ECE <= target", "FAR <= target", "parameters recorded")] == [False] * 4
    assert bad["FAR <= target"].detail == "undefined vs 0.02"
    assert _by_tag(after_calibration_items(res, ece=0.05, ece_max=0.05, far=0.021, far_max=0.02))["FAR <= target"].ok is False


def test_before_inference_wants_the_calibrated_temperature_in_the_modelfile(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    ok = _by_tag(before_inference_items(gguf, "FROM ./m.gguf\nPARAMETER temperature 0.85\n", 0.85))
    assert all(i.ok for i in ok.values()), ok
    default = _by_tag(before_inference_items(gguf, "FROM ./m.gguf\nPARAMETER temperature 0.7\n", 0.85))
    assert default["calibrated parameters set"].ok is False
    assert default["calibrated parameters set"].detail == "Modelfile lacks the calibrated temperature"
    note = "# calibrated temperature 4.2 is outside the sampling range 0.05..2: PARAMETER temperature keeps 0.7"
    out_of_range = _by_tag(before_inference_items(gguf, f"{note}\nFROM ./m.gguf\nPARAMETER temperature 0.7\n", 4.2))
    assert out_of_range["calibrated parameters set"].ok is False
    assert "outside the sampling range" in out_of_range["calibrated parameters set"].detail
    gone = _by_tag(before_inference_items(tmp_path / "gone.gguf", None, None))
    assert gone["GGUF present"].ok is False and gone["calibrated parameters set"].ok is False


def test_markdown_marks_failures_and_not_applicable():
    from release.checklists import CheckItem

    md = checklist_markdown("t", [CheckItem(item="a", ok=True, detail="d1"), CheckItem(item="b", ok=False, detail="d2"),
                                  CheckItem(item="c", ok=None, detail="d3")])
    assert md.splitlines() == ["## t", "", "- [x] a — d1", "- [ ] **FAILED** b — d2", "- [ ] n/a c — d3"]
