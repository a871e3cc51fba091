"""GGUF scoring on the decision prompt, with the real SmolLM2-135M-Instruct Q4_1 and llama.cpp.

The reference path in these tests is written independently of so8t.calibrate.scoring: a plain jinja2
render of the GGUF's template, llama.cpp's tokenizer, and a fresh evaluation of the full prompt
(no KV-cache reuse) for every sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pytest

from so8t.calibrate import scoring
from so8t.decision import LABELS, decision_messages
from so8t.errors import DataError, ModelError
from tests.fixtures.required import require_module, smollm2_gguf

REPO = Path(__file__).resolve().parents[2]
llama_cpp = require_module("llama_cpp")


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def few() -> tuple[list[str], list[str]]:
    """Two records of each label from the bundled validation data (English and Japanese)."""
    texts, labels = scoring.read_labelled(REPO / "data" / "safety_val.jsonl")
    picked = [i for lab in LABELS for i in [j for j, y in enumerate(labels) if y == lab][:2]]
    return [texts[i] for i in picked], [labels[i] for i in picked]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def first_token_scores(gguf, few) -> scoring.Scores:
    return scoring.score_gguf(gguf, *few, mode="first-token", use_cache=False, n_ctx=512, progress=False)


def _fresh_reference(gguf: Path, texts: list[str], continuations: list[list[int]] | None = None):
    """Per text: full-prompt next-token logits (and, per continuation, the log-prob of it), no cache reuse."""
    llm = llama_cpp.Llama(str(gguf), n_ctx=512, logits_all=False, verbose=False)
    try:
        template = jinja2.Template(llm.metadata["tokenizer.chat_template"])
        rows, seq = [], []
        for text in texts:
            prompt = template.render(messages=decision_messages(text), add_generation_prompt=True)
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
            rows.append(logits)
            lp = []
            for cont in continuations or []:
                llm.reset()
                llm.eval(ids)  # the prompt afresh, then the label token by token (as generation decodes it)
                x = logits.astype(np.float64)
                total = 0.0
                for k in range(len(cont)):
                    if k:
                        llm.eval([cont[k - 1]])
                        x = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1),
                                                  shape=(llm.n_vocab(),)).astype(np.float64)
                    total += x[cont[k]] - (x.max() + np.log(np.exp(x - x.max()).sum()))
                lp.append(total)
            seq.append(lp)
        return np.array(rows), np.array(seq)
    finally:
        llm.close()


def test_prefix_cached_first_token_logits_equal_fresh_eval(gguf, few, first_token_scores):
    s = first_token_scores
    assert s.mode == "first-token" and s.z.shape == (6, 3) and s.z.dtype == np.float64
    assert s.n_prefix_tokens > 20  # the system turn is shared and evaluated once
    assert s.label_token_ids == {"ALLOW": [3206, 23557], "ESCALATE": [23110, 3206, 9081], "DENY": [52, 2680, 73]}
    fresh, _ = _fresh_reference(gguf, few[0])
    first = [s.label_token_ids[lab][0] for lab in LABELS]
    np.testing.assert_allclose(s.z, fresh[:, first], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(s.y, [0, 0, 1, 1, 2, 2])


def test_sequence_mode_is_teacher_forced_log_probability(gguf, few):
    texts, labels = few[0][:2], few[1][:2]
    s = scoring.score_gguf(gguf, texts, labels, mode="sequence", use_cache=False, n_ctx=512, progress=False)
    assert s.mode == "sequence"
    _, ref = _fresh_reference(gguf, texts, [s.label_token_ids[lab] for lab in LABELS])
    np.testing.assert_allclose(s.z, ref, atol=2e-4, rtol=0)
    assert np.all(s.z < 0)  # log-probabilities


def test_scores_are_bit_identical_across_runs(gguf, few, first_token_scores):
    again = scoring.score_gguf(gguf, *few, mode="first-token", use_cache=False, n_ctx=512, progress=False)
    assert np.array_equal(again.z, first_token_scores.z)
    assert again.z.tobytes() == first_token_scores.z.tobytes()


def test_second_run_reads_cache_without_calling_the_model(gguf, few, tmp_path, monkeypatch):
    texts, labels = few[0][:3], few[1][:3]
    calls = []
    real_load = scoring._load_model
    monkeypatch.setattr(scoring, "_load_model", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    first = scoring.score_gguf(gguf, texts, labels, n_ctx=512, progress=False)
    assert len(calls) == 1 and not first.from_cache
    files = sorted(p.suffix for p in (tmp_path / "cache" / "scores").iterdir())
    assert files == [".json", ".npz"]

    second = scoring.score_gguf(gguf, texts, labels, n_ctx=512, progress=False)
    assert len(calls) == 1, "a cache hit must not load or evaluate the model"
    assert second.from_cache and second.mode == first.mode
    assert second.z.tobytes() == first.z.tobytes()
    assert second.label_token_ids == first.label_token_ids and second.chat_template == first.chat_template

    scoring.score_gguf(gguf, texts, labels, n_ctx=512, progress=False, use_cache=False)  # --no_cache
    assert len(calls) == 2
    scoring.score_gguf(gguf, texts[:2], labels[:2], n_ctx=512, progress=False)  # other data: other key
    assert len(calls) == 3


def test_corrupt_cache_entry_is_rescored(gguf, few, tmp_path):
    texts, labels = few[0][:1], few[1][:1]
    first = scoring.score_gguf(gguf, texts, labels, n_ctx=512, progress=False)
    npz = tmp_path / "cache" / "scores" / f"{first.cache_key}.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    again = scoring.score_gguf(gguf, texts, labels, n_ctx=512, progress=False)
    assert not again.from_cache and again.z.tobytes() == first.z.tobytes()


def test_colliding_first_tokens_switch_auto_to_sequence(gguf, few):
    spell = ("ALLOW", "ESCALATE", "ESCAPE")  # ESCALATE and ESCAPE both start with the token 'ESC'
    texts, labels = few[0][:1], few[1][:1]
    s = scoring.score_gguf(gguf, texts, labels, label_texts=spell, use_cache=False, n_ctx=512, progress=False)
    assert s.mode == "sequence"
    assert s.label_token_ids["ESCALATE"][0] == s.label_token_ids["DENY"][0]
    with pytest.raises(ModelError, match="first tokens collide"):
        scoring.score_gguf(gguf, texts, labels, label_texts=spell, mode="first-token", use_cache=False, n_ctx=512)


def test_labels_with_identical_tokens_are_a_model_error_naming_labels_and_ids(gguf, few):
    # ESCALATE spelled like DENY: SmolLM2 tokenizes both to [D, EN, Y] after the prompt.
    with pytest.raises(ModelError) as e:
        scoring.score_gguf(gguf, few[0][:1], few[1][:1], label_texts=("ALLOW", "DENY", "DENY"), use_cache=False,
                           n_ctx=512, progress=False)
    msg = str(e.value)
    assert "labels ESCALATE ('DENY') and DENY ('DENY') have identical token ids [52, 2680, 73]" in msg
    assert "cannot tell them apart" in msg and "\n" not in msg


@pytest.mark.parametrize("text", ["", "  \n\t"])
def test_empty_text_is_a_data_error(gguf, text):
    with pytest.raises(DataError, match=r"record 2: field 'text' is empty or only whitespace"):
        scoring.score_gguf(gguf, ["hello", text], ["ALLOW", "DENY"], use_cache=False)


def test_resolve_mode_rules():
    assert scoring.resolve_mode([[1, 2], [3], [4, 5]], "auto") == "first-token"
    assert scoring.resolve_mode([[1, 2], [1, 3], [4]], "auto") == "sequence"
    assert scoring.resolve_mode([[1, 2], [3], [4]], "sequence") == "sequence"
    with pytest.raises(ModelError,
                       match=r"labels ALLOW \('ALLOW'\) and ESCALATE \('ESCALATE'\) have identical token ids \[1, 2\]"):
        scoring.resolve_mode([[1, 2], [1, 2], [4]], "auto")
    with pytest.raises(ModelError, match=r"ESCALATE \('b'\) and DENY \('c'\) have identical token ids \[7\]"):
        scoring.resolve_mode([[1], [7], [7]], "sequence", ("a", "b", "c"))
    assert scoring.common_prefix_length([[1, 2, 3], [1, 2, 4]]) == 2
    assert scoring.common_prefix_length([[1, 2], [1, 2, 4]]) == 1  # every sample keeps a token to evaluate


def test_template_rendering_is_sandboxed():
    with pytest.raises(ModelError, match="failed to render"):
        scoring.render_chat("{{ messages.__class__.__mro__[1].__subclasses__() }}", [{"role": "user", "content": "x"}])
    with pytest.raises(ModelError, match="no system"):
        scoring.render_chat("{{ raise_exception('no system') }}", [])


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"PK\x03\x04 not a model", "not a GGUF"),
])
def test_bad_model_files(tmp_path, content, match):
    path = tmp_path / "m.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        scoring.score_gguf(path, ["hello"], ["ALLOW"])


def test_truncated_gguf_is_a_model_error(gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    with gguf.open("rb") as f:
        cut.write_bytes(f.read(4096))
    with pytest.raises(ModelError, match="could not load"):
        scoring.score_gguf(cut, ["hello"], ["ALLOW"], use_cache=False)


def test_cache_metadata_describes_the_scores(gguf, few, tmp_path):
    s = scoring.score_gguf(gguf, few[0][:1], few[1][:1], n_ctx=512, progress=False)
    meta = json.loads((tmp_path / "cache" / "scores" / f"{s.cache_key}.json").read_text())
    assert meta["model_sha256"] == s.model_sha256 and meta["mode"] == s.mode
    assert meta["prompt_example"].endswith("<|im_start|>assistant\n")
    assert meta["scorer_version"] == scoring.SCORER_VERSION
