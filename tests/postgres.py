"""A throwaway PostgreSQL 15 server for a test: its own temporary data directory and port, stopped after.

As root, PostgreSQL refuses to run, so the server runs as the ``postgres`` user. The URL is a plain
``postgresql://`` one (SQLAlchemy 2.1 maps it to psycopg 3, the ``hwnas[postgres]`` extra);
:func:`fresh_database` gives a test an empty database of its own on a shared server. The test is skipped
when the server binaries are absent, unless ``HWNAS_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), where
their absence fails it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server in a fresh temporary directory (outside pytest's, which the ``postgres`` user
    cannot enter); yields its SQLAlchemy URL; stops it and removes the directory after."""
    if not (BIN / "pg_ctl").exists():
        if os.environ.get("HWNAS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL server binaries not found in {BIN}")
        pytest.skip(f"PostgreSQL server binaries not found in {BIN}")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    directory = Path(tempfile.mkdtemp(prefix="hwnas-pg-"))
    data = directory / "pgdata"
    data.mkdir()
    if as_user:
        shutil.chown(directory, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, cwd=directory)

    run(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``url``; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(url)
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.set(database=name).render_as_string(hide_password=False)
