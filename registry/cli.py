"""Command line of the registry, mounted as ``so8t registry ...`` (also ``python -m registry.cli``).

Human-readable tables by default, ``--json`` for scripts. Exit status: 0 success, 1 ``verify``
found problems (or ``mirror --sync`` left work pending), 2 any error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from registry.errors import InvalidInputError, RegistryError
from registry.models import PRODUCTION
from registry.store import ENV_ROOT, Registry

logger = logging.getLogger(__name__)
PROG = "so8t registry"


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    k, v = text.split("=", 1)
    return k, v


def _json_obj(text: str) -> dict[str, Any]:
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read evidence file {text[1:]}: {e.strerror}") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"evidence is not valid JSON ({e.msg}): pass '{{\"k\": 1}}' or @file.json") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("evidence must be a JSON object, e.g. '{\"ece\": 0.03}'")
    return value


def _add_common(parser: argparse.ArgumentParser, default: Any) -> None:
    """--root, --json and -v on ``parser`` (the top level: real defaults; a command: SUPPRESS, so a value
    given before the command is kept). Fresh actions per parser: shared ones would share defaults."""
    parser.add_argument("--root", type=Path, default=default if default is argparse.SUPPRESS else None,
                        help=f"registry directory (default: ${ENV_ROOT} or ~/.cache/so8t/registry)")
    parser.add_argument("--json", action="store_true", default=default if default is argparse.SUPPRESS else False,
                        help="print machine-readable JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=default if default is argparse.SUPPRESS else False,
                        help="log progress to stderr")


# ----------------------------------------------------------------------------- each command's flags
def _args_list(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", nargs="?", help="model name; omit to list all models")


def _args_show(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="model name")
    s.add_argument("ref", nargs="?", default=PRODUCTION, help="version (v3) or alias (default: production)")


def _args_publish(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="model name, e.g. so8t-smollm2")
    s.add_argument("source", type=Path, help="directory whose files (recursively) form the version")
    s.add_argument("--kind", type=_kv, action="append", default=[], metavar="PATH=KIND",
                   help="kind of one file (gguf, adapter, hf-model, calibration, report, modelfile, "
                        "tokenizer, config, other); others are guessed from their names")
    s.add_argument("--metric", type=_kv, action="append", default=[], metavar="NAME=NUMBER",
                   help="an evaluation metric (repeatable)")
    s.add_argument("--param", type=_kv, action="append", default=[], metavar="NAME=JSON",
                   help="a parameter; the value is parsed as JSON, else kept as a string (repeatable)")
    s.add_argument("--parent", action="append", default=[], help="parent version (repeatable)")
    s.add_argument("--base-model", help="base model id or path")
    s.add_argument("--dataset", type=_kv, action="append", default=[], metavar="NAME=SHA256",
                   help="dataset hash used for training (repeatable)")
    s.add_argument("--code-revision", help="git revision of the code that produced it")
    s.add_argument("--flow-run-id", help="Prefect flow-run id, if published by a flow")
    s.add_argument("--description", default="", help="free-text note")


def _args_judgement(s: argparse.ArgumentParser) -> None:
    """promote and reject: a version or alias, a reason and gate evidence."""
    s.add_argument("name", help="model name")
    s.add_argument("ref", help="version (v3) or alias (e.g. candidate)")
    s.add_argument("--reason", default="", help="why, recorded in the history")
    s.add_argument("--evidence", type=_json_obj, default={}, metavar="JSON|@FILE",
                   help="gate evidence as a JSON object, or @path to a JSON file")


def _args_promote(s: argparse.ArgumentParser) -> None:
    _args_judgement(s)
    s.add_argument("--alias", default=PRODUCTION, help="alias to move (default: production)")
    s.add_argument("--force", action="store_true", help="allow promoting a rejected version")


def _args_rollback(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="model name")
    s.add_argument("--alias", default=PRODUCTION, help="alias to roll back (default: production)")
    s.add_argument("--to", help="explicit target version instead of the previous value")
    s.add_argument("--reason", default="", help="why, recorded in the history")
    s.add_argument("--evidence", type=_json_obj, default={}, metavar="JSON|@FILE",
                   help="evidence as a JSON object, or @path to a JSON file")
    s.add_argument("--force", action="store_true", help="allow rolling back to a rejected version")


def _args_history(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="model name")
    s.add_argument("--alias", help="only changes of this alias")
    s.add_argument("--limit", type=int, default=0, help="only the last N entries (0: all)")


def _args_verify(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", nargs="?", help="only this model (default: the whole store)")


def _args_gc(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")


def _args_export(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="model name")
    s.add_argument("ref", help="version (v3) or alias")
    s.add_argument("dest", type=Path, help="target directory (must not exist or be empty)")
    s.add_argument("--link", action="store_true", help="hard-link read-only blobs instead of copying")
    s.add_argument("--with-manifest", action="store_true", help="also write registry-manifest.json")


def _args_mirror(s: argparse.ArgumentParser) -> None:
    s.add_argument("name", help="model name")
    s.add_argument("--sync", action="store_true",
                   help="upload missing versions (tag vN) and replay alias changes onto main")
    s.add_argument("--repo", help="Hub repo id OWNER/NAME (default: $SO8T_HF_REPO)")
    s.add_argument("--endpoint", help="Hub URL (default: $SO8T_HF_ENDPOINT, $HF_ENDPOINT or huggingface.co)")
    s.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    s.add_argument("--attempts", type=int, default=5, help="tries per Hub call before giving up")
    s.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")


def _args_pull(s: argparse.ArgumentParser) -> None:
    s.add_argument("target", metavar="NAME[@REF]",
                   help="model name, optionally @vN, @ALIAS (resolved on the Hub, e.g. @production) or @latest "
                        "(the highest vN on the Hub); default @production")
    s.add_argument("--repo_id", "--repo", dest="repo", help="Hub repo id OWNER/NAME (default: $SO8T_HF_REPO)")
    s.add_argument("--endpoint", help="Hub URL (default: $SO8T_HF_ENDPOINT, $HF_ENDPOINT or huggingface.co)")
    s.add_argument("--attempts", type=int, default=5, help="tries per Hub call before giving up")
    s.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; every flag has help text (each command's flags: its :data:`COMMANDS` entry)."""
    p = argparse.ArgumentParser(prog=PROG, description=(
        "Versioned artifact registry: content-addressed blobs, immutable versions, aliases "
        "(production, candidate, ...) with history, rollback and a Hugging Face Hub mirror. "
        "--root/--json/-v may be given before or after the command."))
    _add_common(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        s = sub.add_parser(name, help=command.help, description=command.help)
        _add_common(s, argparse.SUPPRESS)
        command.add_args(s)
    return p


def _out(args: argparse.Namespace, value: Any, table: str) -> None:
    if args.json:
        def enc(v: Any) -> Any:
            if isinstance(v, BaseModel):
                return v.model_dump(mode="json")
            if isinstance(v, (list, tuple)):
                return [enc(x) for x in v]
            if isinstance(v, dict):
                return {k: enc(x) for k, x in v.items()}
            return v
        print(json.dumps(enc(value), indent=1, default=str))
    else:
        print(table)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _entries_table(entries: list) -> str:
    return _table(["seq", "time", "action", "alias", "from", "to", "reason"], [
        [e.seq, e.time.strftime("%Y-%m-%d %H:%M:%S"), e.action, e.alias or "-", e.from_version or "-",
         e.to_version or "-", e.reason] for e in entries]) if entries else "no change (already so)"


# ----------------------------------------------------------------------------- each command's run
def _cmd_list(reg: Registry, args: argparse.Namespace) -> int:
    if args.name is None:
        models = reg.list_models()
        rows = [[m, reg.state(m).aliases.get(PRODUCTION, "-"), len(reg.list_versions(m))] for m in models]
        _out(args, [{"name": r[0], "production": r[1], "versions": r[2]} for r in rows],
             _table(["model", "production", "versions"], rows) if rows else f"no models in {reg.root}")
        return 0
    vs = reg.list_versions(args.name)
    _out(args, vs, _table(["version", "state", "aliases", "created", "files", "size", "metrics"], [
        [v.version, v.state.value, ",".join(v.aliases), v.created_at.strftime("%Y-%m-%d %H:%M"),
         v.files, _size(v.size), " ".join(f"{k}={x:.4g}" for k, x in sorted(v.metrics.items()))]
        for v in vs]))
    return 0


def _cmd_show(reg: Registry, args: argparse.Namespace) -> int:
    m = reg.manifest(args.name, args.ref)
    head = (f"{m.name} {m.version}  state={reg.state(args.name).state_of(m.version).value}  "
            f"created={m.created_at.isoformat()}  flow_run={m.flow_run_id or '-'}\n"
            f"lineage: {m.lineage.model_dump_json()}\nmetrics: {json.dumps(m.metrics)}\n"
            f"parameters: {json.dumps(m.parameters)}\n")
    _out(args, m, head + _table(["path", "kind", "size", "sha256"],
                                [[f.path, f.kind.value, f.size, f.sha256] for f in m.files]))
    return 0


def _cmd_publish(reg: Registry, args: argparse.Namespace) -> int:
    params = {}
    for k, v in args.param:
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    try:
        metrics = {k: float(v) for k, v in args.metric}
    except ValueError as e:
        raise RegistryError(f"--metric value is not a number ({e}): use NAME=0.93") from None
    m = reg.publish(args.name, args.source, kinds=dict(args.kind), metrics=metrics, parameters=params,
                    lineage={"parents": tuple(args.parent), "base_model": args.base_model,
                             "dataset_hashes": dict(args.dataset), "code_revision": args.code_revision},
                    flow_run_id=args.flow_run_id, description=args.description)
    _out(args, m, f"published {m.name} {m.version}: {len(m.files)} files, {_size(m.total_size)}")
    return 0


def _cmd_promote(reg: Registry, args: argparse.Namespace) -> int:
    e = reg.promote(args.name, args.ref, args.alias, evidence=args.evidence, reason=args.reason, force=args.force)
    _out(args, e, _entries_table([e] if e else []))
    return 0


def _cmd_reject(reg: Registry, args: argparse.Namespace) -> int:
    es = reg.reject(args.name, args.ref, reason=args.reason, evidence=args.evidence)
    _out(args, es, _entries_table(es))
    return 0


def _cmd_rollback(reg: Registry, args: argparse.Namespace) -> int:
    e = reg.rollback(args.name, args.alias, to=args.to, reason=args.reason, evidence=args.evidence,
                     force=args.force)
    _out(args, e, _entries_table([e] if e else []))
    return 0


def _cmd_history(reg: Registry, args: argparse.Namespace) -> int:
    es = reg.history(args.name, args.alias)
    es = es[-args.limit:] if args.limit > 0 else es
    _out(args, es, _entries_table(es) if es else "no history yet")
    return 0


def _cmd_verify(reg: Registry, args: argparse.Namespace) -> int:
    r = reg.verify(args.name)
    _out(args, r, (f"OK: {r.versions_checked} versions, {r.blobs_checked} blobs, "
                   f"{_size(r.bytes_checked)} re-hashed") if r.ok else "\n".join(["PROBLEMS:", *r.problems]))
    return 0 if r.ok else 1


def _cmd_gc(reg: Registry, args: argparse.Namespace) -> int:
    r = reg.gc(dry_run=args.dry_run)
    _out(args, r, f"{'would remove' if r.dry_run else 'removed'} {len(r.removed_blobs)} blobs "
                  f"({_size(r.freed_bytes)}) and {r.removed_tmp} temporary files")
    return 0


def _cmd_export(reg: Registry, args: argparse.Namespace) -> int:
    dest = reg.export(args.name, args.ref, args.dest, link=args.link, with_manifest=args.with_manifest)
    _out(args, {"dest": str(dest)}, f"exported {args.name} {args.ref} to {dest}")
    return 0


def _cmd_mirror(reg: Registry, args: argparse.Namespace) -> int:
    from registry.hub import HubMirror, MirrorConfig

    cfg = MirrorConfig.from_env(args.repo, args.endpoint, private=not args.public,
                                max_attempts=args.attempts, backoff_s=args.backoff)
    mirror = HubMirror(reg, cfg)
    if args.sync:
        r = mirror.sync(args.name)
        _out(args, r, (f"{cfg.repo_id}: uploaded {', '.join(r.uploaded) or 'nothing'}; "
                       f"{len(r.main_commits)} commit(s) on main; pending: "
                       f"{len(r.pending_versions)} version(s), {r.pending_changes} change(s)"
                       + (f"; skipped (cannot be pushed, see the log): {', '.join(r.skipped_versions)}"
                          if r.skipped_versions else "")))
        if r.error:
            print(f"{PROG}: error: {r.error}", file=sys.stderr)
            return 2
        return 0 if r.ok else 1
    versions, changes = mirror.pending(args.name)
    st = mirror.load_state(args.name)
    _out(args, {"state": st, "pending_versions": versions, "pending_changes": changes},
         f"{cfg.repo_id}: tagged {sorted(st.tags, key=lambda v: int(v[1:])) or 'none'}; main at seq "
         f"{st.main_seq}; pending {versions or 'no versions'}, {changes} change(s)"
         + (f"\nlast error: {st.last_error}" if st.last_error else "")
         + "".join(f"\nskipped {v}: {why}" for v, why in sorted(st.skipped.items())))
    return 0


def _cmd_pull(reg: Registry, args: argparse.Namespace) -> int:
    from registry.hub import HubMirror, MirrorConfig

    name, _, ref = args.target.partition("@")
    if "@" in args.target and not ref:
        raise InvalidInputError(f"{args.target!r}: nothing after '@': use NAME, NAME@vN, NAME@ALIAS or NAME@latest")
    cfg = MirrorConfig.from_env(args.repo, args.endpoint, max_attempts=max(args.attempts, 1),
                                backoff_s=max(args.backoff, 0.0))
    r = HubMirror(reg, cfg).pull(name, ref or PRODUCTION, progress=not args.no_progress and not args.json)
    _out(args, r, f"{r.name} {r.version} is already in {reg.root}, identical: nothing pulled" if r.already_local
         else f"pulled {r.name} {r.version} from {r.repo_id}@{r.commit[:8]}: {len(r.fetched)} file(s) downloaded "
              f"({_size(r.fetched_bytes)}), {len(r.skipped)} already here ({_size(r.skipped_bytes)}); "
              "every sha256 verified")
    return 0


class Command(NamedTuple):
    """One subcommand: its help line, what adds its flags, what runs it (exit status)."""

    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Registry, argparse.Namespace], int]


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {
    "list": Command("list models, or the versions of one model with states and aliases", _args_list, _cmd_list),
    "show": Command("show one version's manifest (files, metrics, lineage)", _args_show, _cmd_show),
    "publish": Command("store a directory as the next version of a model", _args_publish, _cmd_publish),
    "promote": Command("point an alias (default production) at a version, with gate evidence", _args_promote,
                       _cmd_promote),
    "reject": Command("mark a version rejected and remove the aliases pointing at it", _args_judgement, _cmd_reject),
    "rollback": Command("move an alias back to its previous version (or to --to)", _args_rollback, _cmd_rollback),
    "history": Command("show alias and state changes, oldest first", _args_history, _cmd_history),
    "verify": Command("re-hash every blob and check manifests, aliases and history (exit 1 on problems)",
                      _args_verify, _cmd_verify),
    "gc": Command("delete blobs no version references and leftover temporary files", _args_gc, _cmd_gc),
    "export": Command("copy a version's files to a plain directory (llama.cpp, Ollama)", _args_export, _cmd_export),
    "mirror": Command("show or catch up the Hugging Face Hub mirror of a model", _args_mirror, _cmd_mirror),
    "pull": Command("download a version from the Hugging Face Hub mirror into this registry, every file verified "
                    "against its sha256 (a rerun after an outage resumes)", _args_pull, _cmd_pull),
}


def _run(args: argparse.Namespace) -> int:
    return COMMANDS[args.command].run(Registry(args.root), args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: Arguments after ``so8t registry`` (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0 ok, 1 problems found, 2 error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
        return int(e.code or 0)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (RegistryError, OSError, ValueError, argparse.ArgumentTypeError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
