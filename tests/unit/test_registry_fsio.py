"""The registry's one durable temporary-file helper (registry.fsio.durable_tmp, write_all) and its users."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from registry import fsio
from registry.blobs import BlobStore
from registry.errors import IntegrityError


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_finished_block_leaves_a_complete_closed_file(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsio.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with fsio.durable_tmp(tmp_path, "x-", mode=0o444) as (fd, tmp):
        fsio.write_all(fd, b"hello")
        kept = fd
    assert tmp.parent == tmp_path and tmp.name.startswith("x-") and tmp.read_bytes() == b"hello"
    assert _mode(tmp) == 0o444 and synced == [kept]
    with pytest.raises(OSError):
        os.fstat(kept)  # closed


@pytest.mark.parametrize("error", [IntegrityError("bad content"), KeyboardInterrupt()])
def test_a_failed_block_leaves_nothing(tmp_path, error):
    with pytest.raises(type(error)):
        with fsio.durable_tmp(tmp_path) as (fd, tmp):
            fsio.write_all(fd, b"partial")
            raise error
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        os.fstat(fd)


def test_write_all_survives_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(fsio.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))  # 3 bytes at a time
    with fsio.durable_tmp(tmp_path) as (fd, tmp):
        fsio.write_all(fd, b"0123456789abcdef")
    assert tmp.read_bytes() == b"0123456789abcdef"


def test_the_registry_writes_go_through_it(tmp_path):
    """Atomic replace, exclusive create, blobs from bytes and files: complete files, the right modes, no temporaries."""
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    fsio.write_atomic(tmp_path / "state.json", b"{}", tmp_dir=tmp_dir)
    assert (tmp_path / "state.json").read_bytes() == b"{}" and _mode(tmp_path / "state.json") == 0o644
    assert fsio.create_exclusive(tmp_path / "v1.json", b"m", tmp_dir=tmp_dir) is True
    assert fsio.create_exclusive(tmp_path / "v1.json", b"other", tmp_dir=tmp_dir) is False
    assert (tmp_path / "v1.json").read_bytes() == b"m" and _mode(tmp_path / "v1.json") == 0o444
    blobs = BlobStore(tmp_path)
    blobs.ensure()
    digest, size = blobs.put_bytes(b"blob bytes")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    digest2, size2 = blobs.put_file(src)
    assert blobs.path(digest).read_bytes() == b"blob bytes" and size == 10 and _mode(blobs.path(digest)) == 0o444
    assert blobs.path(digest2).read_bytes() == src.read_bytes() and size2 == 3 << 20
    assert list(tmp_dir.iterdir()) == []


# ----------------------------------------------------------------------------- the Windows rules, run here
@pytest.fixture()
def windows(monkeypatch):
    monkeypatch.setattr(fsio, "WINDOWS", True)
    monkeypatch.setattr(fsio, "REPLACE_RETRY_S", 0.3)


def test_windows_replace_is_retried_while_the_target_is_held_open(tmp_path, monkeypatch, windows):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    real, refusals = os.replace, []

    def held_open(src, dst):  # what Windows says while a reader has dst open without delete sharing
        if len(refusals) < 3:
            refusals.append(dst)
            raise PermissionError(13, "The process cannot access the file because it is being used", str(dst))
        return real(src, dst)

    monkeypatch.setattr(fsio.os, "replace", held_open)
    fsio.write_atomic(target, b"new", tmp_dir=tmp_path)
    assert target.read_bytes() == b"new" and len(refusals) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_windows_replace_gives_up_after_the_deadline_and_leaves_old_content(tmp_path, monkeypatch, windows):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def always_held(src, dst):
        raise PermissionError(13, "in use", str(dst))

    monkeypatch.setattr(fsio.os, "replace", always_held)
    with pytest.raises(PermissionError):
        fsio.write_atomic(target, b"new", tmp_dir=tmp_path)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_posix_replace_is_not_retried(tmp_path, monkeypatch):
    calls = []

    def refused(src, dst):
        calls.append(dst)
        raise PermissionError(13, "denied", str(dst))

    monkeypatch.setattr(fsio.os, "replace", refused)
    with pytest.raises(PermissionError):
        fsio.write_atomic(tmp_path / "f", b"x", tmp_dir=tmp_path)
    assert len(calls) == 1


def test_windows_remove_makes_a_read_only_file_writable_first(tmp_path, monkeypatch, windows):
    f = tmp_path / "blob"
    f.write_bytes(b"x")
    os.chmod(f, 0o444)
    real_unlink = Path.unlink

    def windows_unlink(self, missing_ok=False):  # Windows refuses to delete a read-only file
        if self == f and self.exists() and not (self.stat().st_mode & stat.S_IWUSR):
            raise PermissionError(13, "Access is denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", windows_unlink)
    fsio.remove(f)
    assert not f.exists()
    fsio.remove(f)  # gone already: fine
    with pytest.raises(FileNotFoundError):
        fsio.remove(f, missing_ok=False)


def test_windows_modes_are_set_by_path_and_directories_are_not_opened(tmp_path, monkeypatch, windows):
    def no_fchmod(fd, mode):
        raise AssertionError("os.fchmod does not exist on Windows before Python 3.13")

    real_open = os.open

    def no_directory_open(path, flags, *a):
        assert not Path(path).is_dir(), "a directory cannot be opened on Windows"
        return real_open(path, flags, *a)

    monkeypatch.setattr(fsio.os, "fchmod", no_fchmod, raising=False)
    monkeypatch.setattr(fsio.os, "open", no_directory_open)
    assert fsio.create_exclusive(tmp_path / "v1.json", b"{}", tmp_dir=tmp_path, mode=0o444)
    assert _mode(tmp_path / "v1.json") == 0o444 and sorted(p.name for p in tmp_path.iterdir()) == ["v1.json"]
    store = BlobStore(tmp_path / "store")
    store.ensure()
    digest, _ = store.put_bytes(b"blob")
    assert _mode(store.path(digest)) == 0o444
    assert store.put_bytes(b"blob")[0] == digest  # deduplicated: the temporary is removed
    assert store.remove(digest) == 4 and not store.path(digest).exists()
