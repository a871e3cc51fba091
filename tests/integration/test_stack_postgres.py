"""The stack's own PostgreSQL cluster (deployments/stack.py): initdb, 127.0.0.1 only, password logins, restart."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from deployments.stack import StackError, ensure_postgres_installed, free_port, new_postgres


@pytest.fixture
def cluster():
    try:
        bin_dir = ensure_postgres_installed()
    except StackError as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    d = Path(tempfile.mkdtemp(prefix="so8t-pg-test-"))  # /tmp: reachable by the postgres OS user when we are root
    pg = new_postgres(d, free_port(), bin_dir)
    try:
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)


def _query(pg, sql: str, password: str | None = None):
    import asyncpg

    async def go():
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="prefect", database="prefect",
                                     password=password if password is not None else pg.password, timeout=30)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_cluster_serves_prefect_on_localhost_with_a_password_and_restarts(cluster):
    import asyncpg

    cluster.init()
    cluster.start()
    assert cluster.running()
    assert _query(cluster, "SELECT current_user") == "prefect"
    assert _query(cluster, "SHOW listen_addresses") == "127.0.0.1"
    assert _query(cluster, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'prefect'") == "prefect"
    with pytest.raises(asyncpg.InvalidPasswordError):
        _query(cluster, "SELECT 1", password="wrong")
    assert cluster.url == f"postgresql+asyncpg://prefect:{cluster.password}@127.0.0.1:{cluster.port}/prefect"
    _query(cluster, "CREATE TABLE kept (x int)")
    cluster.stop()
    assert not cluster.running()
    cluster.init()  # again: the data directory is kept, not re-initialised
    cluster.start()
    assert _query(cluster, "SELECT count(*) FROM kept") == 0
