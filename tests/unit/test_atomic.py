"""Atomic writes (so8t.atomic): the directory helper behind the bake and the prepared base models."""

from __future__ import annotations

from pathlib import Path

import pytest

from so8t.atomic import atomic_directory, atomic_write_text


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_a_complete_build_replaces_the_target(tmp_path):
    out = tmp_path / "deep" / "model"
    with atomic_directory(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".model-") and not out.exists()
        (tmp / "weights").write_text("new")
    assert (out / "weights").read_text() == "new" and _siblings(out.parent) == ["model"]
    (out / "stale").write_text("from the old build")
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("newer")
    assert _siblings(out) == ["weights"] and (out / "weights").read_text() == "newer"


@pytest.mark.parametrize("error", [RuntimeError("build failed"), KeyboardInterrupt()])
def test_a_failed_build_leaves_nothing_half_written(tmp_path, error):
    out = tmp_path / "model"
    with pytest.raises(type(error)):
        with atomic_directory(out) as tmp:
            (tmp / "half").write_text("partial")
            raise error
    assert _siblings(tmp_path) == []  # no target, no temporary sibling
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(type(error)):
        with atomic_directory(out) as tmp:
            (tmp / "weights").write_text("partial")
            raise error
    assert _siblings(tmp_path) == ["model"] and (out / "weights").read_text() == "old"  # the old one, untouched


def test_bake_and_base_models_use_it():
    from so8t.export import bake
    from so8t import base_models

    assert bake.atomic_directory is atomic_directory and base_models.atomic_directory is atomic_directory


def test_atomic_write_text(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.txt", "héllo")
    assert p.read_text(encoding="utf-8") == "héllo" and _siblings(p.parent) == ["b.txt"]
