"""``so8t decide`` on a tiny random Llama converted to GGUF.

The oracle is independent of so8t.serving.decide: the label scores of every record from
:func:`so8t.calibrate.scoring.score_gguf` (calibration's scorer, whole file at once, cache off), then softmax and
the decision rule in plain numpy. The decider scores one request at a time, in any order, and must
give the same scores and the same decisions.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from so8t.base_models import sha256_file
from so8t.cli import main
from so8t.decision import LABELS, DecisionPrompt
from tests.conftest import write_jsonl
from tests.integration.test_evaluate import _between, _probs
from tests.fixtures.required import require_module

REPO = Path(__file__).resolve().parents[2]
require_module("llama_cpp")
N_CTX = 1024
PROMPT = DecisionPrompt(system="You review requests. Answer with one word: ALLOW, ESCALATE or DENY.",
                        user_template="Request: {text}\nDecision:")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SO8T_REGISTRY", raising=False)


def _decide(p: np.ndarray, tau_deny: float, tau_escalate: float) -> list[str]:
    return [LABELS[2 if row[2] >= tau_deny else 0 if row[0] >= tau_escalate else 1] for row in p.tolist()]


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory) -> dict:
    """A tiny GGUF with its decision prompt and a calibration fitted (by hand) on it, and the oracle's answers."""
    from so8t.export.gguf import convert_to_gguf
    from so8t.calibrate.scoring import score_gguf

    d = tmp_path_factory.mktemp("decide")
    made = convert_to_gguf(tiny_llama, d / "convert", ["Q8_0"], name="tinydecide", fidelity=False).path("Q8_0")
    model_dir = d / "model"
    model_dir.mkdir()
    gguf = model_dir / made.name
    shutil.copyfile(made, gguf)
    rows = [json.loads(line) for line in (REPO / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()]
    records = [{"text": r["text"], "label": r["label"]} for r in rows[:24]]
    z = score_gguf(gguf, [r["text"] for r in records], [r["label"] for r in records], use_cache=False, n_threads=1,
                   n_ctx=N_CTX, prompt=PROMPT, progress=False)
    t = 0.5
    p = _probs(z.z, t)
    tau_deny = _between(p[:, 2], 0.65)
    tau_escalate = _between(p[p[:, 2] < tau_deny, 0], 0.4)
    expected = _decide(p, tau_deny, tau_escalate)
    assert set(expected) == set(LABELS), "the calibration must use every decision"
    cal = {"temperature": t, "tau_deny": tau_deny, "tau_escalate": tau_escalate, "model_sha256": sha256_file(gguf),
           "scoring": {"mode": z.mode, "decision_prompt_sha256": PROMPT.sha256()}}
    (model_dir / "calibration_results.json").write_text(json.dumps(cal), encoding="utf-8")
    (model_dir / "decision_prompt.json").write_text(json.dumps(PROMPT.model_dump()), encoding="utf-8")
    data = write_jsonl(d / "requests.jsonl", [{"id": f"r{i}", **r} for i, r in enumerate(records)])
    return {"gguf": gguf, "records": records, "z": z.z, "p": p, "expected": expected, "cal": cal, "data": data, "dir": d}


def test_decider_equals_calibrations_scorer_one_request_at_a_time_in_any_order(setup):
    from so8t.serving.decide import Decider

    order = list(range(len(setup["records"])))
    random.Random(1).shuffle(order)
    with Decider(str(setup["gguf"]), n_ctx=N_CTX, n_threads=1) as dec:
        assert dec.warnings == []
        got = {i: dec.decide_one(setup["records"][i]["text"]) for i in order}
        # a request that shares more than the template with the one before it, and one twice in a row
        again = dec.decide_one(setup["records"][order[-1]]["text"])
        batch = dec.decide([r["text"] for r in setup["records"]])
    for i, r in enumerate(setup["records"]):
        z = np.array([got[i].scores[lab] for lab in LABELS])
        assert np.array_equal(z, setup["z"][i]), (i, z, setup["z"][i])  # the same split of the same tokens
        assert got[i].decision == setup["expected"][i], i
        assert got[i].decision == batch[i].decision
        assert [got[i].probabilities[lab] for lab in LABELS] == pytest.approx(setup["p"][i].tolist(), abs=1e-4)
        assert sum(got[i].probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        assert got[i].latency_ms > 0 and got[i].tokens > dec.n_prefix
    assert again.scores == got[order[-1]].scores
    assert dec.info.sha256 == setup["cal"]["model_sha256"] and dec.info.scoring_mode == setup["cal"]["scoring"]["mode"]


def test_closing_returns_the_freed_heap_and_bounds_memory_over_load_cycles(setup, monkeypatch):
    """Closing a Decider trims the C heap once; load/close cycles from fresh threads (as the service's
    swaps run) then leave the resident memory flat instead of growing with each model."""
    import sys
    import threading

    import so8t.serving.decide as decide

    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert decide.release_freed_heap() in (True, False)
    calls = []
    real = decide.release_freed_heap
    monkeypatch.setattr(decide, "release_freed_heap", lambda: calls.append(1) or real())
    dec = decide.Decider(str(setup["gguf"]), n_ctx=N_CTX, n_threads=1)
    dec.close()
    dec.close()  # twice: released once
    assert calls == [1] and dec.closed

    def rss_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    if not sys.platform.startswith("linux"):
        return
    held: list = []

    def cycle() -> None:
        t = threading.Thread(target=lambda: held.append(decide.Decider(str(setup["gguf"]), n_ctx=N_CTX, n_threads=1)))
        t.start()
        t.join()
        held.pop(0).close() if len(held) > 1 else None

    for _ in range(4):  # warm up: imports, the first arenas, the page cache
        cycle()
    before = rss_mb()
    for _ in range(16):
        cycle()
    grown = rss_mb() - before
    for d in held:
        d.close()
    # measured here: 0.1 MB with the trim, 14.5 MB over 12 cycles without it (the tiny model's buffers kept in
    # the allocator's per-thread arenas)
    assert grown < 8, f"resident memory grew {grown:.1f} MB over 16 load/close cycles"


def test_cli_one_request_and_a_file(setup, tmp_path, capsys):
    rec = setup["records"][3]
    assert main(["decide", rec["text"], "--model", str(setup["gguf"]), "--n_threads", "1", "--n_ctx", str(N_CTX),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["decision"] == setup["expected"][3]
    assert doc["thresholds"] == {k: setup["cal"][k] for k in ("temperature", "tau_deny", "tau_escalate")}
    assert doc["model"]["sha256"] == setup["cal"]["model_sha256"] and doc["model"]["registry"] is None
    assert main(["decide", rec["text"], "--model", str(setup["gguf"]), "--n_threads", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(setup["expected"][3] + "  p(ALLOW)=") and "tau_deny" in line
    out = tmp_path / "sub" / "decisions.jsonl"
    assert main(["decide", "--input", str(setup["data"]), "--output", str(out), "--model", str(setup["gguf"]),
                 "--n_threads", "1"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["decision"] for r in rows] == setup["expected"]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(rows))] and [r["line"] for r in rows] == list(
        range(1, len(rows) + 1))


def test_registry_reference_follows_the_alias(setup, tmp_path, capsys):
    from registry import Registry

    reg = Registry(tmp_path / "reg")
    m = reg.publish("so8t-tiny", {
        "gguf/tinydecide_Q8_0.gguf": setup["gguf"],
        "gguf/decision_prompt.json": setup["gguf"].parent / "decision_prompt.json",
        "calibration/calibration_results.json": setup["gguf"].parent / "calibration_results.json",
    })
    reg.promote("so8t-tiny", m.version, "production", reason="test")
    rec = setup["records"][5]
    assert main(["decide", rec["text"], "--model", "so8t-tiny@production", "--registry_root", str(tmp_path / "reg"),
                 "--n_threads", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["decision"] == setup["expected"][5]
    assert doc["model"]["registry"]["version"] == "v1" and doc["model"]["registry"]["ref"] == "production"


def _bad(setup, tmp_path, name: str) -> tuple[list[str], str, bytes | None]:
    g = str(setup["gguf"])
    base = ["decide", "--model", g, "--n_threads", "1"]
    if name == "other_model":
        cal = dict(setup["cal"], model_sha256="0" * 64)
        p = tmp_path / "cal.json"
        p.write_text(json.dumps(cal))
        return [*base, "x", "--calibration", str(p)], r"fitted on another model", None
    if name == "blank_text":
        return [*base, "   "], r"TEXT: empty or only whitespace", None
    if name == "too_long":
        return [*base, "a " * 20_000], r"TEXT: \d+ characters, over the limit", None
    if name == "over_context":
        return [*base, "word " * 3000, "--n_ctx", "256"], r"TEXT: the prompt is \d+ tokens, over the context of 256", None
    if name == "not_utf8_stdin":
        return base, r"stdin: not UTF-8", b"caf\xe9"
    if name == "no_calibration":
        alone = tmp_path / "alone.gguf"
        shutil.copyfile(setup["gguf"], alone)
        return ["decide", "--model", str(alone), "x"], r"--calibration: no calibration_results.json beside", None
    if name == "text_and_input":
        return [*base, "x", "--input", str(setup["data"])], r"either TEXT or --input", None
    if name == "output_without_input":
        return [*base, "x", "--output", str(tmp_path / "o.jsonl")], r"--output is for --input", None
    if name == "output_is_dir":
        return [*base, "--input", str(setup["data"]), "--output", str(tmp_path)], r"is a directory", None
    lines = {"input_missing_text": '{"id": 1}\n', "input_bad_json": '{"text": "a"}\n{"text": \n',
             "input_blank_text": '{"text": "a"}\n{"text": ""}\n', "input_bad_id": '{"text": "a", "id": [1]}\n',
             "input_empty": "\n"}[name]
    p = tmp_path / "in.jsonl"
    p.write_text(lines, encoding="utf-8")
    pattern = {"input_missing_text": r"in.jsonl:1: field 'text': missing", "input_bad_json": r"in.jsonl:2: malformed JSON",
               "input_blank_text": r"in.jsonl:2: field 'text': empty", "input_bad_id": r"in.jsonl:1: field 'id'",
               "input_empty": r"in.jsonl: no records"}[name]
    return [*base, "--input", str(p), "--output", str(tmp_path / "out" / "d.jsonl")], pattern, None


BAD = ("other_model", "blank_text", "too_long", "over_context", "not_utf8_stdin", "no_calibration", "text_and_input",
       "output_without_input", "output_is_dir", "input_missing_text", "input_bad_json", "input_blank_text",
       "input_bad_id", "input_empty")


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_one_line_exit_2(setup, tmp_path, name, capsys, monkeypatch):
    import io
    import re
    import sys

    argv, pattern, stdin = _bad(setup, tmp_path, name)
    if stdin is not None:
        fake = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        fake.isatty = lambda: False  # type: ignore[method-assign]
        monkeypatch.setattr(sys, "stdin", fake)
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and rc == 2, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.jsonl").exists()
