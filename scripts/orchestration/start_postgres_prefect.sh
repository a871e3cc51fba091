#!/usr/bin/env bash
# Prefect on PostgreSQL with a so8t-gpu and a so8t-cpu worker that share nothing but the server.
#
#   scripts/orchestration/start_postgres_prefect.sh DIR [more `up` options]   # e.g. --snapshot, --zombie-after 60
#   .venv/bin/python -m deployments.stack status --dir DIR
#   .venv/bin/python -m deployments.stack down --dir DIR [--purge]
#
# Everything is in deployments/stack.py (python -m deployments.stack up --help); this only picks the
# repository's virtualenv and runs it from the repository root. docs/orchestration.md, *Shared stack*.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 DIR [python -m deployments.stack up options]" >&2
    exit 2
fi
dir=$1
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3
cd "$root"
exec "$python" -m deployments.stack up --dir "$dir" "$@"
