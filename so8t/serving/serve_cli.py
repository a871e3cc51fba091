"""``so8t serve``: the production gate over HTTP (see :mod:`so8t.serving.serve`)."""

from __future__ import annotations

import argparse

from so8t.serving.serve import ServeConfig


def _cmd_serve(args: argparse.Namespace) -> int:
    from so8t.cli import config_values
    from so8t.config import build_config
    from so8t.serving.serve import serve

    return serve(build_config(ServeConfig, config_values(args, ServeConfig)))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    from so8t.cli import add_config_flags

    p = sub.add_parser(
        "serve", help="Serve the calibrated decisions (and chat completions) of a registry alias or a GGUF over HTTP.",
        description=(ServeConfig.__doc__ or "") + " Routes: POST /v1/decide, GET /v1/model, POST /v1/chat/completions "
                    "(OpenAI-compatible), GET /healthz, GET /readyz, GET /metrics (Prometheus). A promotion or rollback "
                    "of the followed alias is served within about poll_interval plus the load time; a version that "
                    "fails to load is not swapped in. Prefer $SO8T_API_KEY to --api_key (a flag shows in ps). Exit 2 "
                    "on bad input before listening.",
    )
    add_config_flags(p, ServeConfig)
    p.set_defaults(handler=_cmd_serve)
