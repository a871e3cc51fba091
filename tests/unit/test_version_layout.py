"""One owner of the paths inside a version: what release publishes is what evaluate/decide/serve read."""

from __future__ import annotations

from so8t.version_layout import LAYOUT, VersionLayout


def test_paths_and_kinds():
    assert (LAYOUT.modelfile, LAYOUT.decision_prompt, LAYOUT.calibration, LAYOUT.reliability_diagram) == (
        "gguf/Modelfile", "gguf/decision_prompt.json", "calibration/calibration_results.json",
        "calibration/reliability_diagram.png")
    assert [LAYOUT.kind(p) for p in (LAYOUT.adapter("a.safetensors"), LAYOUT.report("r.json"), LAYOUT.calibration,
                                     LAYOUT.decision_prompt, LAYOUT.gguf("m_Q8_0.gguf"), LAYOUT.modelfile)] == [
        "adapter", "report", "calibration", "config", None, None]
    other = VersionLayout(gguf_dir="models")
    assert other.modelfile == "models/Modelfile" and other.kind("models/decision_prompt.json") == "config"


def test_calibrated_version_files_replace_the_candidates_calibration_and_modelfile(tmp_path):
    from release.layout import Staged, calibrated_files
    from so8t.calibrate.evaluate import VERSION_CALIBRATION

    staged = Staged(version="v3", dir=str(tmp_path), files={
        LAYOUT.gguf("m_Q8_0.gguf"): "g", LAYOUT.modelfile: "old-modelfile", LAYOUT.decision_prompt: "p",
        LAYOUT.calibration: "stale", LAYOUT.adapter("adapter_config.json"): "a"})
    files, kinds = calibrated_files(staged, "results.json", "diagram.png", "new-modelfile")
    assert files[LAYOUT.calibration] == "results.json" and files[LAYOUT.reliability_diagram] == "diagram.png"
    assert files[LAYOUT.modelfile] == "new-modelfile" and files[LAYOUT.gguf("m_Q8_0.gguf")] == "g"
    assert kinds == {LAYOUT.calibration: "calibration", LAYOUT.reliability_diagram: "calibration",
                     LAYOUT.decision_prompt: "config", LAYOUT.adapter("adapter_config.json"): "adapter"}
    assert VERSION_CALIBRATION == LAYOUT.calibration  # where evaluate/decide/serve look is where release writes
