"""A PostgreSQL cluster of the project's own in `team.state_dir`, on 127.0.0.1 only (docs/team.md).

Its one role's random password is kept beside it (mode 600); `initdb` refuses to run as root, so
as root every PostgreSQL binary runs as the `postgres` user (`runuser`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OWNER = "postgres"  # the system user the binaries run as when we are root
ROLE = "mlflow"
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install postgresql-15)"


class PostgresError(Exception):
    """The cluster cannot be made, started or stopped; the message says why."""


def binary(name: str) -> str:
    """A PostgreSQL program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    raise PostgresError(
        f"no PostgreSQL `{name}` on this machine: {INSTALL_HINT}, or point the server at an "
        "existing database with MLFLOW_BACKEND_STORE_URI"
    )


@dataclass(frozen=True)
class PostgresCluster:
    """One cluster: its data folder and the loopback port it listens on."""

    data_dir: Path
    port: int

    @property
    def password_file(self) -> Path:
        return self.data_dir.parent / "postgres.password"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"  # inside: the owner can write it as root too

    def url(self, database: str) -> str:
        """The SQLAlchemy URL MLflow connects with."""
        password = self.password_file.read_text().strip()
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{self.port}/{database}"

    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _run(self, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [binary(name), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OWNER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def _check(self, result: subprocess.CompletedProcess, doing: str) -> None:
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise PostgresError(f"PostgreSQL {doing} failed: {lines[-1]} (log: {self.log_file})")

    def init(self) -> None:
        """initdb, once: a role with a random password, scram-sha-256 on loopback only."""
        if self.exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        with tempfile.NamedTemporaryFile("w", suffix=".pw") as handle:
            handle.write(password + "\n")
            handle.flush()
            if os.geteuid() == 0:
                shutil.chown(self.data_dir, OWNER, OWNER)
                shutil.chown(handle.name, OWNER, OWNER)
            options = ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"]
            result = self._run(
                "initdb", "-D", str(self.data_dir), "-U", ROLE, f"--pwfile={handle.name}", *options
            )
        if result.returncode != 0 and "Permission denied" in result.stderr and os.geteuid() == 0:
            raise PostgresError(
                f"the `{OWNER}` user cannot reach {self.data_dir}: make its parent folders "
                "world-searchable (chmod o+x) or set team.state_dir to a folder it can reach"
            )
        self._check(result, "initdb")
        log.info("made a PostgreSQL cluster in %s", self.data_dir)

    def running(self) -> bool:
        status = self._run("pg_ctl", "status", "-D", str(self.data_dir))
        return self.exists() and status.returncode == 0

    def start(self) -> None:
        if self.running():
            return
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        where = ["-D", str(self.data_dir), "-l", str(self.log_file)]
        result = self._run("pg_ctl", "start", *where, "-w", "-t", "60", "-o", options)
        self._check(result, f"start on 127.0.0.1:{self.port}")
        log.info("PostgreSQL listening on 127.0.0.1:%d (data: %s)", self.port, self.data_dir)

    def stop(self) -> None:
        if not self.running():
            return
        stopped = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")
        self._check(stopped, "stop")
        log.info("PostgreSQL stopped (data kept in %s)", self.data_dir)

    def create_database(self, name: str) -> None:
        """CREATE DATABASE, unless it exists."""
        import psycopg  # the `team` extra: SQLAlchemy 2.1's default PostgreSQL driver

        # autocommit: CREATE DATABASE refuses to run inside a transaction
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists is None:
                connection.execute(f'CREATE DATABASE "{name}"')
