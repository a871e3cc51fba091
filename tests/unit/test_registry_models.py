"""Naming rules and schemas of the registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from registry.errors import InvalidNameError
from registry.models import (
    ArtifactKind,
    FileEntry,
    VersionManifest,
    check_alias,
    check_model_name,
    check_relpath,
    check_version,
    infer_kind,
)


# Pieces that an attacker (or a Windows user) puts in a path: separators, dot components,
# drive letters, NUL and control characters, next to ordinary names; plus arbitrary text.
_PIECES = st.sampled_from(["..", ".", "/", "\\", "a", "gguf", "m.gguf", "C:", "\x00", "\n", " ", "~", "é", "v1"])
PATHS = st.one_of(st.lists(_PIECES, max_size=8).map("".join), st.text(max_size=40))
NAMES = st.one_of(st.lists(_PIECES, max_size=5).map("".join), st.text(max_size=20))


def _run_property(strategy, check, accept) -> dict[str, list[str]]:
    """Run ``check`` on every accepted example; returns the accepted and rejected inputs seen."""
    seen: dict[str, list[str]] = {"accepted": [], "rejected": []}

    @given(strategy)
    @settings(max_examples=400, deadline=None)
    def prop(value: str) -> None:
        try:
            ok = accept(value)
        except InvalidNameError:
            seen["rejected"].append(value)
            return
        seen["accepted"].append(value)
        check(value, ok)

    prop()
    return seen


def test_accepted_paths_stay_inside_the_version() -> None:
    root = Path("/srv/store/version")

    def check(path: str, ok: str) -> None:
        resolved = Path(os.path.normpath(root / ok))
        assert resolved.is_relative_to(root) and resolved != root
        assert "\x00" not in ok and not ok.startswith("/") and "\\" not in ok

    seen = _run_property(PATHS, check, check_relpath)
    # the property was exercised on both sides, with the dangerous pieces actually generated
    assert len(seen["accepted"]) >= 20 and any("/" in p for p in seen["accepted"]), seen["accepted"][:10]
    for piece in ("..", "/", "\\"):
        assert any(piece in p for p in seen["rejected"]), piece


def test_accepted_model_names_are_single_safe_components() -> None:
    def check(name: str, ok: str) -> None:
        assert "/" not in ok and ok not in (".", "..") and "\x00" not in ok and ".." not in ok and "\\" not in ok

    seen = _run_property(NAMES, check, check_model_name)
    assert len(seen["accepted"]) >= 20, seen["accepted"]
    for piece in ("..", "/", "\\"):
        assert any(piece in n for n in seen["rejected"]), piece


def test_error_messages_name_value_rule_and_fix() -> None:
    with pytest.raises(InvalidNameError) as e:
        check_relpath("../escape")
    assert "'../escape'" in str(e.value) and "relative" in str(e.value) and "e.g." in str(e.value)
    with pytest.raises(InvalidNameError, match="v<N>"):
        check_alias("v2")
    with pytest.raises(InvalidNameError, match="leading zeros"):
        check_version("v01")


def test_manifest_is_frozen_sorted_and_strict() -> None:
    f = lambda p: FileEntry(path=p, sha256="a" * 64, size=1, kind="gguf")  # noqa: E731
    m = VersionManifest(name="m", version="v1", files=(f("b"), f("a")))
    assert [x.path for x in m.files] == ["a", "b"]
    with pytest.raises(ValidationError):
        m.version = "v2"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="duplicate"):
        VersionManifest(name="m", version="v1", files=(f("a"), f("a")))
    with pytest.raises(ValidationError):
        VersionManifest(name="m", version="v1", files=(), surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        FileEntry(path="../x", sha256="a" * 64, size=1, kind="gguf")
    assert VersionManifest.model_validate_json(m.model_dump_json()) == m


@pytest.mark.parametrize(("path", "kind"), [
    ("a/model.Q4_K_M.gguf", ArtifactKind.GGUF), ("Modelfile", ArtifactKind.MODELFILE),
    ("adapter_config.json", ArtifactKind.ADAPTER), ("calibration.json", ArtifactKind.CALIBRATION),
    ("tokenizer.json", ArtifactKind.TOKENIZER), ("model-00001.safetensors", ArtifactKind.HF_MODEL),
    ("config.json", ArtifactKind.CONFIG), ("eval_report.md", ArtifactKind.REPORT), ("x.bin2", ArtifactKind.OTHER),
])
def test_infer_kind(path: str, kind: ArtifactKind) -> None:
    assert infer_kind(path) == kind


def test_non_finite_metrics_are_refused_at_publish(tmp_path):
    import pytest

    from registry import Registry

    reg = Registry(root=tmp_path / "reg")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    with pytest.raises(Exception, match=r"not finite"):
        reg.publish("m", src, metrics={"ece": float("nan")})
    assert "m" not in reg.list_models() or not reg.list_versions("m")  # nothing half-published
