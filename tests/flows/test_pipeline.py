"""so8t-pipeline end to end on a tiny Llama, including a SIGKILL during training and a resume.

One scenario (session fixture), three runs of the same parameters:

1. in a subprocess, SIGKILLed as soon as the first complete training checkpoint exists;
2. in this process: training resumes from that checkpoint, the run completes and promotes;
3. again: every expensive stage (train, bake, convert, quantize, calibrate) is a cache hit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flows.helpers import artifacts_of, flow_runs_tagged, table_rows, task_runs_tagged

EXPENSIVE = ("train-so8t", "bake-so8t", "convert-gguf", "quantize-gguf", "calibrate-gguf")


def test_pipeline_promotes_a_calibrated_version_whose_gguf_loads(pipeline_scenario):
    from llama_cpp import Llama

    from registry import Registry

    s = pipeline_scenario
    reg = Registry(s["params"].model.registry_root)
    name = s["params"].model.name
    prod = reg.get(name, "production")
    assert prod.manifest.version == s["second"].promotion.version == "v2"
    assert prod.manifest.lineage.parents == ("v1",)
    paths = {f.path: f.kind.value for f in prod.manifest.files}
    assert paths["calibration/calibration_results.json"] == "calibration"
    assert paths["calibration/reliability_diagram.png"] == "calibration"
    assert {"reports/gguf_report.json", "reports/bake_report.json", "reports/so8t_train_config.json",
            "gguf/Modelfile", "adapter/adapter_model.safetensors"} <= set(paths)
    results = json.loads(prod.path("calibration/calibration_results.json").read_text())
    assert prod.manifest.parameters["calibration"]["temperature"] == pytest.approx(results["temperature"])
    from so8t.serving.inference import MODELFILE_DEFAULTS, SAMPLING_TEMPERATURE_RANGE

    t = results["temperature"]
    in_range = SAMPLING_TEMPERATURE_RANGE[0] <= t <= SAMPLING_TEMPERATURE_RANGE[1]
    modelfile = prod.path("gguf/Modelfile").read_text()
    assert f"PARAMETER temperature {(t if in_range else MODELFILE_DEFAULTS['temperature']):g}" in modelfile
    assert in_range or f"calibrated temperature {t:g} is outside the sampling range" in modelfile
    assert "FROM ./tiny-so8t_Q8_0.gguf" in prod.path("gguf/Modelfile").read_text()
    assert set(prod.manifest.metrics) >= {"ece", "brier", "macro_f1", "false_allow_rate"}
    # the decision prompt the model was trained on travels with it and was the one calibrated on
    assert paths["gguf/decision_prompt.json"] == "config"
    trained_prompt = json.loads(prod.path("gguf/decision_prompt.json").read_text())
    assert results["scoring"]["decision_system"] == trained_prompt["system"]

    llm = Llama(model_path=str(prod.path("gguf/tiny-so8t_Q8_0.gguf")), n_ctx=64, verbose=False)
    try:
        assert llm.n_vocab() == 512
    finally:
        llm.close()
    history = reg.history(name, "production")
    assert [(e.action, e.to_version) for e in history] == [("promote", "v2")]
    assert history[0].evidence["gate"]["passed"] is True
    assert reg.verify(name).ok


def test_pipeline_shows_artifacts_and_checklists(pipeline_scenario):
    runs = flow_runs_tagged(f"{pipeline_scenario['tag']}-2")
    assert len(runs) == 1 and runs[0].state.name == "Completed"  # one run: every artifact on its page, no sub-flows
    keys = {a.key for a in artifacts_of([r.id for r in runs])}
    assert {"training-progress", "training-loss", "bake-check", "gguf-files", "calibration-report", "gate-verdict",
            "registry-version", "registry-promotion", "smoke-test", "runbook-checklist"} <= keys
    # no production yet: no A/B run and no A/B artifact; the gate table says why it was skipped
    assert "ab-evaluation" not in keys
    (gate,) = artifacts_of([r.id for r in runs], "gate-verdict")
    rows = table_rows(gate)
    assert [r["criterion"] for r in rows][-1] == "ab_non_inferiority"
    assert rows[-1]["passed"] == "skipped" and "no production version" in rows[-1]["reason"]
    assert all(r["passed"] is True for r in rows[:-1]) and gate.description.endswith(": PASS")
    (checklist,) = artifacts_of([r.id for r in runs], "runbook-checklist")  # one per run, updated in place
    sections = [ln[3:] for ln in checklist.data.splitlines() if ln.startswith("## ")]
    assert [s.split(" (")[0] for s in sections] == ["学習前", "学習後", "焼き込み・変換後", "較正後", "推論前"], sections
    assert checklist.description.startswith("Runbook checklist: before-training ") and "before-inference" in checklist.description
    assert checklist.data.count("- [") == 4 + 5 + 4 + 4 + 3
    report = artifacts_of([r.id for r in runs], "calibration-report")[0]
    assert "data:image/png;base64," in report.data and "Verdict: PASS" in report.data
    progress = artifacts_of([r.id for r in runs], "training-progress")[0]
    assert progress.data == 100.0


def test_pipeline_evaluates_the_calibrated_candidate_on_held_out_data(pipeline_scenario):
    """The heldout-evaluation table next to the gate verdict: so8t evaluate's numbers, recomputed here."""
    import numpy as np

    from so8t.calibrate.evaluate import read_evaluation
    from so8t.calibrate.metrics import decide, softmax
    from so8t.calibrate.scoring import read_labelled, score_gguf

    runs = flow_runs_tagged(f"{pipeline_scenario['tag']}-2")
    (art,) = artifacts_of([r.id for r in runs], "heldout-evaluation")
    rows = table_rows(art)
    test_file = Path(pipeline_scenario["params"].evaluation.data)
    overall = rows[0]
    assert overall["file"] == test_file.name and overall["group"] == "overall" and overall["n"] == 24
    report_path = next(Path(pipeline_scenario["root"], "work").rglob("heldout-evaluation/evaluation.json"))
    report = read_evaluation(report_path)
    cal = report.calibration
    texts, labels = read_labelled(test_file)
    z = score_gguf(report.model.path, texts, labels, use_cache=False).z  # the tiny run trained on the default prompt
    d = decide(softmax(z, cal.temperature), cal.tau_deny, cal.tau_escalate)
    y = np.array([["ALLOW", "ESCALATE", "DENY"].index(lab) for lab in labels])
    neg = y != 0
    assert overall["far"] == (((d == 0) & neg).sum() / neg.sum())
    assert overall["over_refusal"] == (((d != 0) & ~neg).sum() / (~neg).sum())


def test_kill_during_training_resumes_from_checkpoint(pipeline_scenario):
    s = pipeline_scenario
    assert not s["finished_before_kill"], "the kill came after training had finished: nothing was resumed"
    cand = s["second"].candidate
    assert cand.resumed_from is not None and Path(cand.resumed_from).name.startswith("checkpoint-")
    assert int(Path(cand.resumed_from).name.split("-")[1]) >= int(s["killed_at"].split("-")[1])
    assert cand.train_steps == 16
    steps = [json.loads(ln)["step"] for ln in (s["train_dir"] / "loss_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17)), "the loss log has each step once after the resume"
    killed = [r for r in flow_runs_tagged(f"{s['tag']}-1") if r.name and r.state]
    assert killed and all(r.state.name != "Completed" for r in killed)


def test_rerun_after_completion_hits_the_cache_for_every_finished_stage(pipeline_scenario):
    s = pipeline_scenario
    runs = task_runs_tagged(f"{s['tag']}-3")
    states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
    assert all(states[name] == "Cached" for name in EXPENSIVE), states
    assert s["third"].candidate.version == "v1" and s["third"].promotion.version == "v2"
    second_runs = task_runs_tagged(f"{s['tag']}-2")
    assert {r.name.rsplit("-", 1)[0]: r.state.name for r in second_runs}["train-so8t"] == "Completed"
