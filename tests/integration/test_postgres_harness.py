"""The PostgreSQL fixture starts a real server that psycopg 3 can use (the fleet store of
phase 2 will live on it)."""

from __future__ import annotations

import psycopg
from harness import PostgresServer


def test_postgres_fixture_serves_sql_over_loopback(postgres_server: PostgresServer) -> None:
    assert postgres_server.dsn.startswith("postgresql://postgres@127.0.0.1:")
    with psycopg.connect(postgres_server.dsn, connect_timeout=5) as conn:
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, fence bigint NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 7)")
        row = conn.execute("SELECT fence FROM t WHERE id = 1").fetchone()
        assert row == (7,)
        version = conn.execute("SHOW server_version").fetchone()
        assert version is not None and int(version[0].split(".")[0]) >= 13
        addr = conn.execute("SELECT inet_server_addr()").fetchone()
        assert addr is not None and str(addr[0]) == "127.0.0.1"
