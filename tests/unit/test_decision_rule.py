"""The calibrated decision rule's file reader (so8t/calibrate/decision_rule.py) and the one softmax (so8t/logits.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax

from so8t.calibrate.decision_rule import load_calibration, read_calibration_file
from so8t.errors import ConfigError, DataError
from so8t.logits import log_softmax, softmax


def test_read_calibration_file_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"absent.json: calibration file not found"):
        read_calibration_file(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json:1: malformed JSON at column 2"):
        read_calibration_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"bad.json: the calibration file holds a list, expected a JSON object: pass the calibration_results"):
        read_calibration_file(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="cannot read the calibration file"):
        read_calibration_file(bad)


def test_load_calibration_reads_the_rule_and_refuses_bad_numbers(tmp_path):
    p = tmp_path / "calibration_results.json"
    p.write_text(json.dumps({"temperature": 1.5, "tau_deny": 0.4, "tau_escalate": 0.7, "other": 1}))
    cal = load_calibration(p)
    assert (cal.temperature, cal.tau_deny, cal.tau_escalate, cal.source) == (1.5, 0.4, 0.7, str(p))
    for doc, pattern in (({"temperature": 1.0, "tau_deny": 0.5}, r"'tau_escalate' is None"),
                         ({"temperature": True, "tau_deny": 0.5, "tau_escalate": 0.5}, r"'temperature' is True"),
                         ({"temperature": 0.0, "tau_deny": 0.5, "tau_escalate": 0.5}, r"temperature 0.0 must be > 0")):
        p.write_text(json.dumps(doc))
        with pytest.raises(DataError, match=pattern):
            load_calibration(p)


@pytest.mark.parametrize("t", [0.05, 1.0, 3.7])
def test_log_softmax_matches_scipy(t):
    rng = np.random.default_rng(1)
    z = rng.normal(scale=30.0, size=(50, 3))  # large logits: the stable form is needed
    np.testing.assert_allclose(log_softmax(z, t), scipy_log_softmax(z / t, axis=-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(softmax(z, t).sum(axis=-1), 1.0, rtol=1e-12)
    with pytest.raises(ConfigError, match="temperature"):
        log_softmax(z, 0.0)


def test_read_json_object_names_file_line_and_column(tmp_path):
    from so8t.jsonfile import read_json_object

    p = tmp_path / "params.json"
    p.write_text('{"a": 1,\n  "b": }\n')
    with pytest.raises(DataError, match=r"params.json:2: malformed JSON at column 8: Expecting value \(hint\)$"):
        read_json_object(p, "parameters file", hint=" (hint)")
    p.write_text('"text"')
    with pytest.raises(DataError, match=r"the parameters file holds a str, expected a JSON object"):
        read_json_object(p, "parameters file")
    with pytest.raises(DataError, match=r"absent.json: parameters file not found$"):
        read_json_object(tmp_path / "absent.json", "parameters file")
    p.write_text('{"a": [1, 2]}')
    assert read_json_object(p, "parameters file") == {"a": [1, 2]}
