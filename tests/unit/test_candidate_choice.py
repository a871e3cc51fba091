"""Which version calibrate-and-promote takes when none is named (the deployment default)."""

from __future__ import annotations

import pytest

from registry import Registry
from registry.errors import NotFoundError
from release.versions import find_candidate, newest_uncalibrated_candidate

NAME = "m"


def _publish(reg: Registry, tag: str, *, calibrated: bool = False, parent: str | None = None) -> str:
    files = {"gguf/m.gguf": tag.encode()}
    kinds = {"gguf/m.gguf": "gguf"}
    if calibrated:
        files["calibration/calibration_results.json"] = b'{"temperature": 1.0}'
        kinds["calibration/calibration_results.json"] = "calibration"
    m = reg.publish(NAME, files, kinds=kinds, lineage={"parents": [parent]} if parent else None, description=tag)
    return m.version


def test_newest_uncalibrated_candidate_skips_calibrated_rejected_and_already_calibrated(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = _publish(reg, "first")
    v2 = _publish(reg, "v1 calibrated", calibrated=True, parent=v1)  # v1 was calibrated: no longer awaiting
    reg.promote(NAME, v2)
    v3 = _publish(reg, "second")  # the answer
    v4 = _publish(reg, "third")
    _publish(reg, "v4 calibrated", calibrated=True, parent=v4)  # v4 calibrated (e.g. rejected by the gate)
    v6 = _publish(reg, "fourth")
    reg.reject(NAME, v6, reason="bad")  # rejected: not a candidate any more
    _publish(reg, "a calibrated candidate without parent", calibrated=True)
    assert newest_uncalibrated_candidate(reg, NAME) == v3 == find_candidate(str(reg.root), NAME)

    v8 = _publish(reg, "fifth")
    assert find_candidate(str(reg.root), NAME) == v8  # newest wins


def test_no_candidate_awaiting_calibration_is_a_clear_error(tmp_path):
    reg = Registry(tmp_path / "reg")
    v1 = _publish(reg, "only")
    _publish(reg, "calibrated", calibrated=True, parent=v1)
    assert newest_uncalibrated_candidate(reg, NAME) is None
    with pytest.raises(NotFoundError, match="no candidate awaiting calibration"):
        find_candidate(str(reg.root), NAME)


def test_pipeline_params_compose_the_two_recipes_parameters_without_restating_them():
    """Every field of the pipeline's parameters is a field of retrain's or calibrate-and-promote's (with the same
    type and default), and the halves it hands to the two recipes carry its values."""
    from release.params import CalibrateAndPromoteParams, PipelineParams, RetrainParams
    from so8t.calibrate.promotion_gate import GateConfig

    pipe, ret, cap = PipelineParams.model_fields, RetrainParams.model_fields, CalibrateAndPromoteParams.model_fields
    assert set(pipe) == (set(ret) | set(cap)) - {"emit_event", "version"}
    for name, f in pipe.items():
        other = ret.get(name) or cap[name]
        assert f.annotation == other.annotation and f.description == other.description, name
    p = PipelineParams(work_dir="w", gate=GateConfig(ece_max=0.1))
    r, c = p.retrain(), p.promotion("v7")
    assert (r.work_dir, r.emit_event, r.train) == ("w", False, p.train)
    assert (c.version, c.gate.ece_max, c.work_dir, c.smoke) == ("v7", 0.1, "w", p.smoke)
