"""Command line of the registry, mounted as ``so8t registry ...`` (also ``python -m registry.cli``).

Human-readable tables by default, ``--json`` for scripts. Exit status: 0 success, 1 ``verify``
found problems (or ``mirror --sync`` left work pending), 2 any error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; every flag has help text."""
    def add_common(parser: argparse.ArgumentParser, default: Any) -> None:
        # Fresh actions per parser: shared ones would share defaults between levels.
        parser.add_argument("--root", type=Path, default=default if default is argparse.SUPPRESS else None,
                            help=f"registry directory (default: ${ENV_ROOT} or ~/.cache/so8t/registry)")
        parser.add_argument("--json", action="store_true", default=default if default is argparse.SUPPRESS else False,
                            help="print machine-readable JSON instead of tables")
        parser.add_argument("-v", "--verbose", action="store_true",
                            default=default if default is argparse.SUPPRESS else False,
                            help="log progress to stderr")

    p = argparse.ArgumentParser(prog=PROG, description=(
        "Versioned artifact registry: content-addressed blobs, immutable versions, aliases "
        "(production, candidate, ...) with history, rollback and a Hugging Face Hub mirror. "
        "--root/--json/-v may be given before or after the command."))
    add_common(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        add_common(s, argparse.SUPPRESS)
        return s

    s = cmd("list", "list models, or the versions of one model with states and aliases")
    s.add_argument("name", nargs="?", help="model name; omit to list all models")

    s = cmd("show", "show one version's manifest (files, metrics, lineage)")
    s.add_argument("name", help="model name")
    s.add_argument("ref", nargs="?", default=PRODUCTION, help="version (v3) or alias (default: production)")

    s = cmd("publish", "store a directory as the next version of a model")
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

    for name, text in (("promote", "point an alias (default production) at a version, with gate evidence"),
                       ("reject", "mark a version rejected and remove the aliases pointing at it")):
        s = cmd(name, text)
        s.add_argument("name", help="model name")
        s.add_argument("ref", help="version (v3) or alias (e.g. candidate)")
        s.add_argument("--reason", default="", help="why, recorded in the history")
        s.add_argument("--evidence", type=_json_obj, default={}, metavar="JSON|@FILE",
                       help="gate evidence as a JSON object, or @path to a JSON file")
        if name == "promote":
            s.add_argument("--alias", default=PRODUCTION, help="alias to move (default: production)")
            s.add_argument("--force", action="store_true", help="allow promoting a rejected version")

    s = cmd("rollback", "move an alias back to its previous version (or to --to)")
    s.add_argument("name", help="model name")
    s.add_argument("--alias", default=PRODUCTION, help="alias to roll back (default: production)")
    s.add_argument("--to", help="explicit target version instead of the previous value")
    s.add_argument("--reason", default="", help="why, recorded in the history")
    s.add_argument("--evidence", type=_json_obj, default={}, metavar="JSON|@FILE",
                   help="evidence as a JSON object, or @path to a JSON file")
    s.add_argument("--force", action="store_true", help="allow rolling back to a rejected version")

    s = cmd("history", "show alias and state changes, oldest first")
    s.add_argument("name", help="model name")
    s.add_argument("--alias", help="only changes of this alias")
    s.add_argument("--limit", type=int, default=0, help="only the last N entries (0: all)")

    s = cmd("verify", "re-hash every blob and check manifests, aliases and history (exit 1 on problems)")
    s.add_argument("name", nargs="?", help="only this model (default: the whole store)")

    s = cmd("gc", "delete blobs no version references and leftover temporary files")
    s.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")

    s = cmd("export", "copy a version's files to a plain directory (llama.cpp, Ollama)")
    s.add_argument("name", help="model name")
    s.add_argument("ref", help="version (v3) or alias")
    s.add_argument("dest", type=Path, help="target directory (must not exist or be empty)")
    s.add_argument("--link", action="store_true", help="hard-link read-only blobs instead of copying")
    s.add_argument("--with-manifest", action="store_true", help="also write registry-manifest.json")

    s = cmd("mirror", "show or catch up the Hugging Face Hub mirror of a model")
    s.add_argument("name", help="model name")
    s.add_argument("--sync", action="store_true",
                   help="upload missing versions (tag vN) and replay alias changes onto main")
    s.add_argument("--repo", help="Hub repo id OWNER/NAME (default: $SO8T_HF_REPO)")
    s.add_argument("--endpoint", help="Hub URL (default: $SO8T_HF_ENDPOINT, $HF_ENDPOINT or huggingface.co)")
    s.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    s.add_argument("--attempts", type=int, default=5, help="tries per Hub call before giving up")
    s.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")

    s = cmd("pull", "download a version from the Hugging Face Hub mirror into this registry, every file "
                    "verified against its sha256 (a rerun after an outage resumes)")
    s.add_argument("target", metavar="NAME[@REF]",
                   help="model name, optionally @vN, @ALIAS (resolved on the Hub, e.g. @production) or @latest "
                        "(the highest vN on the Hub); default @production")
    s.add_argument("--repo_id", "--repo", dest="repo", help="Hub repo id OWNER/NAME (default: $SO8T_HF_REPO)")
    s.add_argument("--endpoint", help="Hub URL (default: $SO8T_HF_ENDPOINT, $HF_ENDPOINT or huggingface.co)")
    s.add_argument("--attempts", type=int, default=5, help="tries per Hub call before giving up")
    s.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
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


def _run(args: argparse.Namespace) -> int:
    reg = Registry(args.root)
    c = args.command
    if c == "list" and args.name is None:
        models = reg.list_models()
        rows = [[m, reg.state(m).aliases.get(PRODUCTION, "-"), len(reg.list_versions(m))] for m in models]
        _out(args, [{"name": r[0], "production": r[1], "versions": r[2]} for r in rows],
             _table(["model", "production", "versions"], rows) if rows else f"no models in {reg.root}")
    elif c == "list":
        vs = reg.list_versions(args.name)
        _out(args, vs, _table(["version", "state", "aliases", "created", "files", "size", "metrics"], [
            [v.version, v.state.value, ",".join(v.aliases), v.created_at.strftime("%Y-%m-%d %H:%M"),
             v.files, _size(v.size), " ".join(f"{k}={x:.4g}" for k, x in sorted(v.metrics.items()))]
            for v in vs]))
    elif c == "show":
        m = reg.manifest(args.name, args.ref)
        head = (f"{m.name} {m.version}  state={reg.state(args.name).state_of(m.version).value}  "
                f"created={m.created_at.isoformat()}  flow_run={m.flow_run_id or '-'}\n"
                f"lineage: {m.lineage.model_dump_json()}\nmetrics: {json.dumps(m.metrics)}\n"
                f"parameters: {json.dumps(m.parameters)}\n")
        _out(args, m, head + _table(["path", "kind", "size", "sha256"],
                                    [[f.path, f.kind.value, f.size, f.sha256] for f in m.files]))
    elif c == "publish":
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
    elif c == "promote":
        e = reg.promote(args.name, args.ref, args.alias, evidence=args.evidence, reason=args.reason, force=args.force)
        _out(args, e, _entries_table([e] if e else []))
    elif c == "reject":
        es = reg.reject(args.name, args.ref, reason=args.reason, evidence=args.evidence)
        _out(args, es, _entries_table(es))
    elif c == "rollback":
        e = reg.rollback(args.name, args.alias, to=args.to, reason=args.reason, evidence=args.evidence,
                         force=args.force)
        _out(args, e, _entries_table([e] if e else []))
    elif c == "history":
        es = reg.history(args.name, args.alias)
        es = es[-args.limit:] if args.limit > 0 else es
        _out(args, es, _entries_table(es) if es else "no history yet")
    elif c == "verify":
        r = reg.verify(args.name)
        _out(args, r, (f"OK: {r.versions_checked} versions, {r.blobs_checked} blobs, "
                       f"{_size(r.bytes_checked)} re-hashed") if r.ok else "\n".join(["PROBLEMS:", *r.problems]))
        return 0 if r.ok else 1
    elif c == "gc":
        r = reg.gc(dry_run=args.dry_run)
        _out(args, r, f"{'would remove' if r.dry_run else 'removed'} {len(r.removed_blobs)} blobs "
                      f"({_size(r.freed_bytes)}) and {r.removed_tmp} temporary files")
    elif c == "export":
        dest = reg.export(args.name, args.ref, args.dest, link=args.link, with_manifest=args.with_manifest)
        _out(args, {"dest": str(dest)}, f"exported {args.name} {args.ref} to {dest}")
    elif c == "pull":
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
    elif c == "mirror":
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
