"""The one llama.cpp loader (so8t.llama): its thread policy, what each caller asks of it, its errors.

llama_cpp.Llama is replaced by a recorder: the tests see exactly the arguments a model would be
opened with, without a model file.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from so8t import llama
from so8t.errors import ModelError


@pytest.fixture
def recorder(monkeypatch):
    seen: list[dict] = []

    def fake_llama(**kwargs):
        seen.append(kwargs)
        raise ValueError("recorded, not loaded")

    monkeypatch.setattr(llama_cpp, "Llama", fake_llama)
    return seen


@pytest.mark.parametrize("cores, asked, half, everything", [
    (2, 0, (1, 1), (2, 2)),
    (16, 0, (8, 8), (16, 16)),
    (1, 0, (1, 1), (1, 1)),
    (None, 0, (1, 1), (1, 1)),  # os.cpu_count() unknown
    (16, 3, (3, 3), (3, 16)),  # "all": batches stay on every core, whatever n_threads is
])
def test_thread_policy(monkeypatch, cores, asked, half, everything):
    monkeypatch.setattr(llama.os, "cpu_count", lambda: cores)
    assert llama.thread_counts(asked, "half") == half
    assert llama.thread_counts(asked, "all") == everything
    assert llama.thread_counts(-1, "half") == llama.thread_counts(0, "half")
    assert llama.default_threads() == max(1, (cores or 2) // 2)
    with pytest.raises(ValueError, match="unknown"):
        llama.thread_counts(0, "most")  # type: ignore[arg-type]


def test_open_llama_passes_the_policy_and_maps_errors(recorder, monkeypatch, tmp_path):
    monkeypatch.setattr(llama.os, "cpu_count", lambda: 8)
    with pytest.raises(ModelError, match=r"m\.gguf: llama\.cpp could not load the model \(recorded, not loaded\): is it"):
        llama.open_llama(tmp_path / "m.gguf", 256)
    assert recorder[-1] == dict(model_path=str(tmp_path / "m.gguf"), n_ctx=256, n_batch=512, logits_all=False,
                                verbose=False, n_threads=4, n_threads_batch=4, seed=0)
    with pytest.raises(ModelError, match="^custom$"):
        llama.open_llama(tmp_path / "m.gguf", 64, n_threads=2, default="all", n_batch=64, logits_all=True, seed=None,
                         message=lambda path, e: "custom")
    assert recorder[-1] == dict(model_path=str(tmp_path / "m.gguf"), n_ctx=64, n_batch=64, logits_all=True,
                                verbose=False, n_threads=2, n_threads_batch=8)  # seed None: llama-cpp-python's own


def test_every_caller_loads_through_the_one_loader(recorder, monkeypatch, tmp_path):
    """Scoring (and decide/serve), A/B generation, GGUF fidelity and `so8t run` keep their settings."""
    from so8t.ab import perf as abperf
    from so8t.export import fidelity as gguf_fidelity
    from so8t.serving import inference
    from so8t.calibrate import scoring

    monkeypatch.setattr(llama.os, "cpu_count", lambda: 8)
    path = tmp_path / "m.gguf"
    calls = [
        (lambda: scoring._load_model(path, 1024, 0), dict(n_ctx=1024, n_batch=512, logits_all=False, n_threads=4,
                                                          n_threads_batch=4, seed=0)),
        (lambda: abperf.GreedyGenerator(path, 2048, 3, seed=7), dict(n_ctx=2048, n_batch=512, logits_all=False,
                                                                     n_threads=3, n_threads_batch=3, seed=7)),
        (lambda: gguf_fidelity._open_gguf(path, 4096, 0, logits_all=True), dict(n_ctx=4096, n_batch=2048, logits_all=True,
                                                                               n_threads=8, n_threads_batch=8)),
        (lambda: gguf_fidelity._open_gguf(path, 100, 1), dict(n_ctx=100, n_batch=100, logits_all=False, n_threads=1,
                                                             n_threads_batch=8)),
    ]
    for call, want in calls:
        with pytest.raises(ModelError):
            call()
        assert recorder[-1] == dict(model_path=str(path), verbose=False, **want)
    assert abperf.resolve_threads(0) == 4 and abperf.resolve_threads(5) == 5

    info = inference.GgufChatInfo(path=path, architecture="llama", chat_template=None, bos_token="", eos_token="",
                                  add_bos=True, context_length=4096)
    monkeypatch.setattr(inference, "read_chat_info", lambda g: info)
    monkeypatch.setattr(inference, "tokenize", lambda *a, **k: [1, 2, 3])
    monkeypatch.setattr(llama, "load_hint", lambda p: ": hint")
    with pytest.raises(ModelError, match=r"^llama\.cpp cannot load .*m\.gguf \(recorded, not loaded\): hint$"):
        list(inference.generate(path, "hi", raw=True, n_predict=5, seed=None))
    assert recorder[-1] == dict(model_path=str(path), n_ctx=8, n_batch=8, logits_all=False, verbose=False,
                                n_threads=8, n_threads_batch=8)


def test_a_missing_llama_cpp_is_one_line(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_llama(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(ModelError, match=r"llama-cpp-python is not importable .*pip install"):
        llama.open_llama(tmp_path / "m.gguf", 64)


class _FakeLlm:
    """Enough of a Llama for the token helpers."""

    def __init__(self):
        self.ctx = object()
        self.calls: list[tuple] = []

    def n_vocab(self) -> int:
        return 5

    def detokenize(self, tokens, special=False):
        return {1: b"<s>", 2: b"\xff</s>"}[tokens[0]]

    def tokenize(self, data, add_bos=True, special=False):
        self.calls.append((data, add_bos, special))
        return [9]


def test_token_helpers(monkeypatch):
    llm = _FakeLlm()
    assert llama.special_token_text(llm, -1) == ""
    assert llama.special_token_text(llm, 1) == "<s>"
    assert llama.special_token_text(llm, 2) == "\ufffd</s>"  # undecodable bytes are replaced, not raised

    llama.template_token_ids(llm, "<s>hi", "<s>")
    llama.template_token_ids(llm, "hi", "<s>")
    llama.template_token_ids(llm, "hi", "")
    assert llm.calls == [(b"<s>hi", False, True), (b"hi", True, True), (b"hi", True, True)]

    buf = (ctypes.c_float * 5)(*[0.5, -1.0, 3.0, 2.0, 0.0])
    ptr = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))  # what llama_get_logits_ith returns
    monkeypatch.setattr(llama_cpp, "llama_get_logits_ith", lambda ctx, i: ptr)
    copy, view = llama.next_token_logits(llm), llama.next_token_logits(llm, copy=False)
    assert copy.dtype == np.float32 and copy.tolist() == [0.5, -1.0, 3.0, 2.0, 0.0]
    buf[0] = 9.0
    assert view[0] == 9.0 and copy[0] == 0.5  # the view follows llama.cpp's buffer; the copy does not


def test_load_hint_names_the_known_causes(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    assert "not a valid GGUF" in llama.load_hint(bad)
    assert llama.diagnosed_message(bad, ValueError("x")) == f"llama.cpp cannot load {bad} (x){llama.load_hint(bad)}"
    assert isinstance(llama.load_hint(Path("/nonexistent.gguf")), str)


def test_extra_buffer_types_are_off_for_every_load_unless_asked(monkeypatch):
    """llama.cpp's AMX buffer crashes on AMX CPUs: every load in the process, direct Llama(...) included, gets
    use_extra_bufts=False; SO8T_LLAMA_EXTRA_BUFFERS=1 gives llama.cpp's default back."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from so8t.llama import EXTRA_BUFFERS_ENV, configure_llama_cpp

    configure_llama_cpp(llama_cpp)
    configure_llama_cpp(llama_cpp)  # idempotent: wrapped once
    wrapped = llama_cpp.llama_cpp.llama_model_default_params
    assert wrapped._so8t_policy and llama_cpp.llama_model_default_params is wrapped
    monkeypatch.delenv(EXTRA_BUFFERS_ENV, raising=False)
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is False
    monkeypatch.setenv(EXTRA_BUFFERS_ENV, "1")
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts is True  # llama.cpp's own default

