"""The local PostgreSQL server: a private cluster (initdb) that the project owns, started and
stopped with pg_ctl, plus the role and database that DATABASE_URL names."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg

from posttrain.stack import process
from posttrain.stack.component import ComponentStatus, StackError, State, check_not_taken
from posttrain.stack.config import DatabaseTarget, render_pg_hba, render_postgresql_conf
from posttrain.stack.paths import StackPaths

NAME = "postgres"
SUPERUSER = "postgres"
INCLUDE_FILE = "posttrain.conf"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: POSTTRAIN_PG_BIN, else the newest Debian-style install,
    else the directory of a pg_ctl on PATH (Debian keeps them off PATH)."""
    configured = os.environ.get("POSTTRAIN_PG_BIN")
    if configured:
        return Path(configured)
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _tool(name: str) -> str:
    directory = bin_dir()
    if directory is None or not (directory / name).exists():
        raise StackError(
            NAME,
            f"PostgreSQL's {name} was not found; install PostgreSQL (apt-get install postgresql) "
            "or set POSTTRAIN_PG_BIN to the directory holding pg_ctl",
        )
    return str(directory / name)


def _own(path: Path, paths: StackPaths) -> None:
    """Hand a file or directory we (root) created to the server's OS user."""
    if paths.pg_os_user is not None:
        shutil.chown(path, paths.pg_os_user, paths.pg_os_user)


def _write(path: Path, text: str, paths: StackPaths) -> None:
    path.write_text(text)
    _own(path, paths)


def _postmaster(paths: StackPaths) -> tuple[int, int | None] | None:
    """(pid, port) from postmaster.pid, if that process is alive and is a postgres."""
    pid_file = paths.pg_data / "postmaster.pid"
    try:
        # Line 1 is the pid, line 4 the port (see PostgreSQL's pidfile.h).
        lines = pid_file.read_text().splitlines()
    except OSError:
        return None
    if not lines or not lines[0].strip().isdigit():
        return None
    pid = int(lines[0].strip())
    if not process.pid_alive(pid):
        return None
    argv = process.cmdline(pid)
    if not argv or "postgres" not in Path(argv[0]).name:
        return None  # a stale file naming a reused pid
    port = lines[3].strip() if len(lines) > 3 else ""
    return pid, int(port) if port.isdigit() else None


def _postmaster_pid(paths: StackPaths) -> int | None:
    found = _postmaster(paths)
    return found[0] if found else None


def status(paths: StackPaths, target: DatabaseTarget) -> ComponentStatus:
    found = _postmaster(paths)
    pid = found[0] if found else None
    if found is not None and found[1] is not None and found[1] != target.port:
        return ComponentStatus(
            NAME,
            State.ELSEWHERE,
            target.address,
            pid,
            paths.pg_data,
            paths.pg_log,
            serving_at=f"{target.host}:{found[1]}",
        )
    answers = process.port_open(target.host, target.port, timeout=0.5)
    if pid is not None:
        state = State.RUNNING if answers else State.STARTING
    else:
        state = State.FOREIGN if answers else State.STOPPED
    return ComponentStatus(NAME, state, target.address, pid, paths.pg_data, paths.pg_log)


def init_cluster(paths: StackPaths) -> bool:
    """initdb the private data dir unless it holds a cluster already; True if it was created."""
    data = paths.pg_data
    if (data / "PG_VERSION").exists():
        return False
    if data.exists() and any(data.iterdir()):
        raise StackError(
            NAME,
            f"{data} is not empty and holds no PostgreSQL cluster; move it away or set "
            "POSTTRAIN_PGDATA to another directory",
        )
    data.parent.mkdir(parents=True, exist_ok=True)
    data.mkdir(mode=0o700, exist_ok=True)
    _own(data, paths)
    result = process.run(
        [
            _tool("initdb"),
            "-D",
            str(data),
            f"--username={SUPERUSER}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            # C collation: identical behaviour on every machine, no locale package needed.
            "--locale=C",
        ],
        user=paths.pg_os_user,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise StackError(NAME, f"initdb {data} failed:\n{output}")
    return True


def configure(paths: StackPaths, target: DatabaseTarget) -> None:
    """Our settings live in an included file rewritten on every start (so a changed
    DATABASE_URL port takes effect); postgresql.conf itself gains only the include line."""
    data = paths.pg_data
    _write(data / INCLUDE_FILE, render_postgresql_conf(target, paths.pg_socket_dir), paths)
    _write(data / "pg_hba.conf", render_pg_hba(), paths)
    main_conf = data / "postgresql.conf"
    text = main_conf.read_text()
    include = f"include = '{INCLUDE_FILE}'"
    if include not in text:
        _write(main_conf, text.rstrip("\n") + f"\n\n# posttrain\n{include}\n", paths)


def start(paths: StackPaths, target: DatabaseTarget) -> tuple[str, ComponentStatus]:
    current = status(paths, target)
    if current.state is State.RUNNING:
        return "already running", current
    check_not_taken(current, server="server", variable="DATABASE_URL")
    created = init_cluster(paths)
    configure(paths, target)
    if current.state is State.STOPPED:
        # After initdb, which wants an empty data dir (the log may live inside it).
        paths.pg_log.parent.mkdir(parents=True, exist_ok=True)
        _own(paths.pg_log.parent, paths)
        result = process.run(
            [
                _tool("pg_ctl"),
                "-D",
                str(paths.pg_data),
                "-l",
                str(paths.pg_log),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            user=paths.pg_os_user,
            timeout=START_TIMEOUT_S + 30,
            new_session=True,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-2000:]
            raise StackError(NAME, f"pg_ctl start failed:\n{output}", paths.pg_log)
    # pg_ctl -w returns once the server accepts connections; the TCP probe confirms it listens
    # where DATABASE_URL says.
    if not process.wait_until(
        lambda: process.port_open(target.host, target.port, 0.5), START_TIMEOUT_S
    ):
        raise StackError(NAME, f"the server does not answer on {target.address}", paths.pg_log)
    return ("initialised and started" if created else "started"), status(paths, target)


def stop(paths: StackPaths) -> str:
    pid = _postmaster_pid(paths)
    if pid is None:
        return "not running"
    pg_ctl = [_tool("pg_ctl"), "-D", str(paths.pg_data), "-w", "-t", str(STOP_TIMEOUT_S), "stop"]
    # fast: roll back open transactions and disconnect clients, then a clean checkpoint.
    result = process.run(
        [*pg_ctl, "-m", "fast"], user=paths.pg_os_user, timeout=STOP_TIMEOUT_S + 30
    )
    if result.returncode != 0:
        # immediate: no checkpoint, WAL replay on the next start; nothing committed is lost.
        process.run([*pg_ctl, "-m", "immediate"], user=paths.pg_os_user, timeout=60)
    if not process.terminate(pid, 10.0):
        raise StackError(NAME, f"the server (pid {pid}) did not exit", paths.pg_log)
    return f"stopped (pid {pid})"


async def _ensure_role_and_database(paths: StackPaths, target: DatabaseTarget) -> list[str]:
    # As the superuser over the private unix socket (trust): no password to manage for it.
    conn = await asyncpg.connect(
        host=str(paths.pg_socket_dir),
        port=target.port,
        user=SUPERUSER,
        database="postgres",
        timeout=10,
    )
    done: list[str] = []
    try:
        # DDL takes no bind parameters; format() quotes the identifier and the literal.
        role_exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", target.user)
        verb = "ALTER" if role_exists else "CREATE"
        # ALTER also resets the password, so the role always matches DATABASE_URL. CREATEDB:
        # the test suite gives each run a database of its own.
        statement = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I WITH LOGIN CREATEDB PASSWORD %L', $1::text, $2::text)",
            target.user,
            target.password,
        )
        await conn.execute(statement)
        if not role_exists:
            done.append(f"role {target.user}")
        db_exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", target.database
        )
        if not db_exists:
            statement = await conn.fetchval(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                target.database,
                target.user,
            )
            await conn.execute(statement)
            done.append(f"database {target.database}")
    finally:
        await conn.close()
    return done


def ensure_role_and_database(paths: StackPaths, target: DatabaseTarget) -> list[str]:
    """Create the role and database DATABASE_URL names, idempotently; what was created."""
    try:
        return asyncio.run(_ensure_role_and_database(paths, target))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StackError(
            NAME, f"creating role/database from DATABASE_URL failed: {exc}", paths.pg_log
        ) from exc
