"""``so8t run`` and ``so8t modelfile`` on real GGUF files made by ``so8t convert`` (no mocks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from so8t.cli import build_parser, main
from so8t.errors import ModelError
from so8t.export.gguf import convert_to_gguf
from so8t.serving.inference import generate, translate_template

SYS_USER = [{"role": "system", "content": "You are a careful reviewer."},
            {"role": "user", "content": "Is this request safe?\nAnswer briefly."}]


def render_go(template: str, messages: list[dict]) -> str:
    """Our own tiny renderer of the Go template ``so8t modelfile`` writes (range over .Messages)."""
    head, rest = template.split("{{ range .Messages }}", 1)
    body, tail = rest.rsplit("{{ end }}{{ end }}", 1)
    out = head
    for m in messages:
        branch = re.search(r'\{\{ (?:else )?if eq \.Role "%s" \}\}(.*?)(?:\{\{ else if|$)' % m["role"], body, re.S)
        out += branch.group(1).replace("{{ .Content }}", m["content"]) if branch else ""
    return out + tail


def parse_modelfile(text: str) -> dict:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    params: dict[str, list[str]] = {}
    for k, v in re.findall(r"^PARAMETER (\w+) (.+)$", text, re.M):
        params.setdefault(k, []).append(v)
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1), "template": template,
            "system": system.group(1) if system else None, "params": params}


@pytest.fixture(scope="module")
def tiny_ggufs(tiny_llama, tiny_phi3, tmp_path_factory):
    out = tmp_path_factory.mktemp("inference_ggufs")
    llama = convert_to_gguf(tiny_llama, out, ["Q8_0"], name="tinyllama", fidelity=False)
    phi3 = convert_to_gguf(tiny_phi3, out, ["Q8_0"], name="tinyp", fidelity=False)
    return {"llama": llama.path("Q8_0"), "phi3": phi3.path("Q8_0"), "dir": out}


def test_run_streams_tokens_from_tiny_gguf(tiny_ggufs, capsys):
    rc = main(["run", "-m", str(tiny_ggufs["llama"]), "-p", "review the data", "-n", "12", "-t", "1", "--seed", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.strip(), "no tokens generated"
    pieces = list(generate(tiny_ggufs["phi3"], "hello", n_predict=6, temperature=1.0, seed=5, system="Be brief."))
    assert 1 <= len(pieces) <= 6 and "".join(pieces)  # a random model: some greedy picks are lone UTF-8 bytes


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"GGUF file .* does not exist"),
    ("garbage", r"not a readable GGUF file"),
    ("truncated", r"(not a readable GGUF file|llama\.cpp cannot load)"),
])
def test_run_bad_gguf_is_one_line_exit_2(case, pattern, tiny_ggufs, tmp_path, capsys):
    path = tmp_path / "model.gguf"
    if case == "garbage":
        path.write_text("this is not a model\n")
    elif case == "truncated":
        path.write_bytes(tiny_ggufs["llama"].read_bytes()[:4096])
    rc = main(["run", "-m", str(path), "-p", "hi", "-n", "4"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("so8t: error: "), err
    assert re.search(pattern, err[-1]), err[-1]
    assert captured.out == ""


def test_modelfile_phi3_template_renders_like_hf(tiny_ggufs, tiny_phi3, tmp_path, capsys):
    calib = tmp_path / "calibration_results.json"
    calib.write_text(json.dumps({"temperature": 0.65, "tau_deny": 0.5}))
    out = tiny_ggufs["dir"] / "Modelfile"
    rc = main(["modelfile", "--model", str(tiny_ggufs["phi3"]), "--calibration", str(calib), "--output", str(out)])
    assert rc == 0
    mf = parse_modelfile(out.read_text())
    tok = AutoTokenizer.from_pretrained(str(tiny_phi3))
    want = tok.apply_chat_template(SYS_USER, add_generation_prompt=True, tokenize=False)
    assert render_go(mf["template"], SYS_USER) == want
    assert mf["from"] == "./tinyp_Q8_0.gguf"
    assert mf["params"]["temperature"] == ["0.65"] and mf["params"]["stop"] == ['"<|end|>"']
    assert mf["params"]["top_p"] == ["0.9"] and mf["params"]["top_k"] == ["40"] and mf["params"]["num_ctx"] == ["4096"]
    assert mf["system"] is None


def test_modelfile_default_temperature_and_bad_calibration(tiny_ggufs, tmp_path, capsys):
    assert main(["modelfile", "--model", str(tiny_ggufs["llama"]), "--output", "-"]) == 0
    mf = parse_modelfile(capsys.readouterr().out)
    assert mf["params"]["temperature"] == ["0.7"] and '"</s>"' in mf["params"]["stop"]
    bad = tmp_path / "calib.json"
    bad.write_text(json.dumps({"temp": 0.5}))
    out = tmp_path / "Modelfile"
    rc = main(["modelfile", "--model", str(tiny_ggufs["llama"]), "--calibration", str(bad), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and re.search(r"top-level 'temperature' is None", err[-1]) and not out.exists()


def test_calibrated_temperature_outside_sampling_range_keeps_default(tiny_ggufs, tmp_path, capsys):
    calib = tmp_path / "calibration_results.json"
    calib.write_text(json.dumps({"temperature": 20.0}))  # an untrained model's fit at its bound
    assert main(["modelfile", "--model", str(tiny_ggufs["llama"]), "--calibration", str(calib), "--output", "-"]) == 0
    text = capsys.readouterr().out
    assert parse_modelfile(text)["params"]["temperature"] == ["0.7"]
    assert "calibrated temperature 20 is outside the sampling range" in text


def test_unknown_template_family_is_refused():
    llama2 = ("{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}"
              "{% elif m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
              "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")
    with pytest.raises(ModelError, match=r"cannot be translated to an Ollama TEMPLATE .*write TEMPLATE by hand"):
        translate_template(llama2, "<s>", "</s>")


def test_help_explains_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("run", "modelfile", "convert"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.fixture(scope="module")
def smollm2_q8(tmp_path_factory) -> Path:
    from so8t.base_models import prepare_embedded

    out = tmp_path_factory.mktemp("smollm2_gguf")
    return convert_to_gguf(prepare_embedded("smollm2"), out, ["Q8_0"], name="smollm2", fidelity=False).path("Q8_0")


FRANCE_CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
               "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
               "The capital of France is")


@pytest.mark.slow
def test_smollm2_q8_answers_and_knows_paris(smollm2_q8, capsys):
    """The CLI streams a greedy answer, and the quantized model puts " Paris" first among the candidates.

    The exact greedy text is not asserted: it depends on the CPU's kernels (an AMD EPYC and an Intel
    Xeon round Q8_0 dot products differently, and a near-tie flips the path). What holds on any x86-64
    CPU is the model's knowledge, read as next-token logits after a teacher-forced answer prefix.
    """
    from so8t.llama import next_token_logits
    from so8t.calibrate.scoring import _load_model

    rc = main(["run", "-m", str(smollm2_q8), "-p", "What is the capital of France?", "--temp", "0", "-n", "24", "-t", "1"])
    assert rc == 0
    assert len(capsys.readouterr().out.strip()) >= 2, "no answer streamed"

    llm = _load_model(smollm2_q8, n_ctx=256, n_threads=1)
    try:
        llm.eval(llm.tokenize(FRANCE_CHAT.encode(), add_bos=False, special=True))
        logits = next_token_logits(llm).astype(np.float64)
        top5 = [llm.detokenize([int(t)]).decode("utf-8", "replace") for t in np.argsort(-logits)[:5]]
        paris, london = (llm.tokenize(w.encode(), add_bos=False, special=False)[0] for w in (" Paris", " London"))
    finally:
        llm.close()
    assert " Paris" in top5, top5
    assert logits[paris] - logits[london] > 2.0  # a wide margin: no kernel's rounding reaches it


@pytest.mark.slow
def test_modelfile_smollm2_chatml_renders_like_hf(smollm2_q8, capsys):
    from so8t.base_models import prepare_embedded

    assert main(["modelfile", "--model", str(smollm2_q8), "--output", "-"]) == 0
    mf = parse_modelfile(capsys.readouterr().out)
    tok = AutoTokenizer.from_pretrained(str(prepare_embedded("smollm2")))
    assert render_go(mf["template"], SYS_USER) == tok.apply_chat_template(SYS_USER, add_generation_prompt=True, tokenize=False)
    # Without a system message the HF template inserts its default one; Ollama does the same from SYSTEM.
    user_only = SYS_USER[1:]
    with_default = [{"role": "system", "content": mf["system"]}, *user_only]
    assert render_go(mf["template"], with_default) == tok.apply_chat_template(user_only, add_generation_prompt=True, tokenize=False)
    assert mf["params"]["stop"] == ['"<|im_end|>"']
