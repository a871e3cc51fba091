"""Aliases, version states and their append-only history, for one model.

Files in ``<root>/models/<name>/``:

* ``state.json``: :class:`~registry.models.ModelState` (aliases, non-default version states,
  rollback stacks, the entries of the last change). Replaced atomically; it is the commit point.
* ``history.jsonl``: one :class:`~registry.models.HistoryEntry` per line, append-only.
* ``lock``: the file lock that serialises changes (``registry.locks``).

A change runs under the lock: recover, compute the new state, write ``state.json`` (commit),
append the entries to ``history.jsonl``. If a process dies after the commit but before the append,
the next change (or any reader) finds ``state.seq`` ahead of the history and re-appends
``state.last_entries``; a torn last line is dropped. So history never loses a committed change and
never shows an uncommitted one. No step reads the list of versions: an alias change costs the same
with 1 or 10,000 versions.
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from registry.errors import InvalidInputError, StateError
from registry.fsio import append_lines, read_complete_lines, read_last_line, write_atomic
from registry.locks import DEFAULT_TIMEOUT_S, file_lock
from registry.models import PRODUCTION, HistoryEntry, ModelState, VersionState, parse_stored

logger = logging.getLogger(__name__)

UNDO_DEPTH = 256
"""Rollback remembers this many earlier values per alias (history.jsonl keeps all of them)."""

Change = Callable[[ModelState], tuple[ModelState, list[dict[str, Any]]]]


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AliasLog:
    """State and history of one model's aliases."""

    def __init__(self, model_dir: Path, tmp_dir: Path, lock_timeout_s: float = DEFAULT_TIMEOUT_S):
        """Args:
        model_dir: ``<root>/models/<name>``.
        tmp_dir: Temporary directory on the same file system.
        lock_timeout_s: How long to wait for the model lock.
        """
        self.state_path = model_dir / "state.json"
        self.history_path = model_dir / "history.jsonl"
        self.lock_path = model_dir / "lock"
        self.tmp_dir = tmp_dir
        self.lock_timeout_s = lock_timeout_s

    def read_state(self) -> ModelState:
        """Return the committed state (no lock needed: the file is replaced atomically)."""
        try:
            return parse_stored(ModelState, self.state_path.read_bytes(), str(self.state_path))
        except FileNotFoundError:
            return ModelState()

    def history(self) -> list[HistoryEntry]:
        """Return every committed entry, oldest first, including a not yet appended tail."""
        lines, _ = read_complete_lines(self.history_path)
        entries = [parse_stored(HistoryEntry, ln, f"{self.history_path}:{i}") for i, ln in enumerate(lines, start=1)]
        last = entries[-1].seq if entries else 0
        state = self.read_state()
        entries.extend(e for e in state.last_entries if e.seq > last)
        return entries

    def change(self, fn: Change) -> list[HistoryEntry]:
        """Apply ``fn`` to the state under the lock and record its history entries.

        Args:
            fn: Pure function ``state -> (new_state, entry_fields)``; each item of
                ``entry_fields`` holds the HistoryEntry fields except seq/time/actor.

        Returns:
            The recorded entries (empty when ``fn`` decided nothing changes).
        """
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path, timeout_s=self.lock_timeout_s):
            state, good_size = self._recover()
            new_state, fields = fn(state)
            if not fields:
                return []
            actor = _actor()
            try:
                entries = [
                    HistoryEntry(seq=state.seq + i + 1, actor=actor, **f) for i, f in enumerate(fields)
                ]
            except ValidationError as e:
                raise InvalidInputError(
                    f"history entry rejected: {e.errors()[0]['msg']} at "
                    f"{'.'.join(map(str, e.errors()[0]['loc']))}; evidence must be a JSON object "
                    "(str/number/bool/null/list/dict values)"
                ) from None
            committed = new_state.model_copy(
                update={"seq": entries[-1].seq, "last_entries": tuple(entries)}
            )
            write_atomic(self.state_path, committed.model_dump_json().encode(), tmp_dir=self.tmp_dir)
            append_lines(
                self.history_path,
                [e.model_dump_json().encode() for e in entries],
                good_size=good_size,
            )
            for e in entries:
                logger.info(
                    "%s %s: %s %s -> %s (%s)", e.action, self.state_path.parent.name, e.alias,
                    e.from_version, e.to_version, e.reason or "no reason given",
                )
            return entries

    def _recover(self) -> tuple[ModelState, int]:
        """Bring history.jsonl level with state.json (lock held). Returns (state, good_size)."""
        state = self.read_state()
        line, good_size = read_last_line(self.history_path)
        last = parse_stored(HistoryEntry, line, f"{self.history_path} (last line)").seq if line else 0
        missing = [e for e in state.last_entries if e.seq > last]
        if missing:
            logger.warning(
                "%s: re-appending %d history entr%s of a change interrupted after its commit",
                self.history_path, len(missing), "y" if len(missing) == 1 else "ies",
            )
            append_lines(
                self.history_path, [e.model_dump_json().encode() for e in missing], good_size=good_size
            )
            _, good_size = read_last_line(self.history_path)
        elif last > state.seq:
            logger.error(
                "%s has entries up to seq %d beyond state.json seq %d: edited by hand?",
                self.history_path, last, state.seq,
            )
        return state, good_size


def _move(
    state: ModelState, alias: str, target: str | None, *, push_undo: bool, pop_undo: bool = False
) -> tuple[ModelState, dict[str, VersionState]]:
    """Point ``alias`` at ``target`` and update states and undo stacks (pure)."""
    current = state.aliases.get(alias)
    aliases = dict(state.aliases)
    if target is None:
        aliases.pop(alias, None)
    else:
        aliases[alias] = target
    undo = dict(state.undo)
    stack = list(undo.get(alias, ()))
    if push_undo:
        stack = (stack + [current])[-UNDO_DEPTH:]
    elif pop_undo and stack:
        stack.pop()
    undo[alias] = tuple(stack)
    states = dict(state.states)
    changes: dict[str, VersionState] = {}
    if alias == PRODUCTION:
        if current is not None and current != target and states.get(current) == VersionState.PRODUCTION:
            changes[current] = VersionState.ARCHIVED
        if target is not None:
            changes[target] = VersionState.PRODUCTION
    states.update(changes)
    return state.model_copy(update={"aliases": aliases, "undo": undo, "states": states}), changes


def promote_change(version: str, alias: str, *, force: bool, common: dict[str, Any]) -> Change:
    """Change that points ``alias`` at ``version`` (no-op if it already does)."""

    def fn(state: ModelState) -> tuple[ModelState, list[dict[str, Any]]]:
        if state.state_of(version) == VersionState.REJECTED and not force:
            raise StateError(
                f"{version} is rejected and cannot become {alias!r}: publish a fixed version, or "
                "pass force=True (--force) to override the rejection"
            )
        current = state.aliases.get(alias)
        if current == version:
            return state, []
        new, changes = _move(state, alias, version, push_undo=True)
        return new, [dict(action="promote", alias=alias, from_version=current, to_version=version,
                          version=version, state_changes=changes, **common)]

    return fn


def reject_change(version: str, *, common: dict[str, Any]) -> Change:
    """Change that marks ``version`` rejected and removes every alias pointing at it."""

    def fn(state: ModelState) -> tuple[ModelState, list[dict[str, Any]]]:
        if state.aliases.get(PRODUCTION) == version:
            raise StateError(
                f"{version} is production and cannot be rejected while it serves: roll production "
                "back (so8t registry rollback NAME) or promote another version first"
            )
        if state.state_of(version) == VersionState.REJECTED:
            return state, []
        pointing = sorted(a for a, v in state.aliases.items() if v == version)
        aliases = {a: v for a, v in state.aliases.items() if v != version}
        states = {**state.states, version: VersionState.REJECTED}
        new = state.model_copy(update={"aliases": aliases, "states": states})
        rejected = {version: VersionState.REJECTED}
        if not pointing:
            return new, [dict(action="reject", version=version, state_changes=rejected, **common)]
        return new, [
            dict(action="reject", alias=a, from_version=version, to_version=None, version=version,
                 state_changes=rejected if i == 0 else {}, **common)
            for i, a in enumerate(pointing)
        ]

    return fn


def rollback_change(alias: str, to: str | None, *, force: bool, common: dict[str, Any]) -> Change:
    """Change that moves ``alias`` back to its previous value, or to version ``to``."""

    def fn(state: ModelState) -> tuple[ModelState, list[dict[str, Any]]]:
        current = state.aliases.get(alias)
        if to is not None:
            if state.state_of(to) == VersionState.REJECTED and not force:
                raise StateError(
                    f"cannot roll {alias!r} back to {to}: it is rejected; choose another version "
                    "or pass force=True (--force)"
                )
            if current == to:
                return state, []
            new, changes = _move(state, alias, to, push_undo=True)
            return new, [dict(action="rollback", alias=alias, from_version=current, to_version=to,
                              version=to, state_changes=changes, **common)]
        stack = list(state.undo.get(alias, ()))
        while stack and stack[-1] is not None and state.state_of(stack[-1]) == VersionState.REJECTED:
            stack.pop()  # skip versions rejected since they were replaced
        if not stack or stack[-1] is None or stack[-1] == current:
            raise StateError(
                f"alias {alias!r} (now {current}) has no earlier version to roll back to: pass an "
                "explicit version (to='v3' / --to v3)"
            )
        target = stack[-1]
        trimmed = state.model_copy(update={"undo": {**state.undo, alias: tuple(stack)}})
        new, changes = _move(trimmed, alias, target, push_undo=False, pop_undo=True)
        return new, [dict(action="rollback", alias=alias, from_version=current, to_version=target,
                          version=target, state_changes=changes, **common)]

    return fn
