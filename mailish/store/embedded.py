"""A private PostgreSQL for ``mailish up`` (and the test suite), from the machine's binaries.

It lives in one folder (``<data_dir>/pg``), listens only on a Unix socket in a 0700 folder
(no TCP port to collide with or expose), is reused on the next start, and is stopped on exit.
PostgreSQL refuses to run as root, so as root the server runs as the unprivileged
``postgres`` user that Debian's package creates. A lock file keeps two ``mailish up``
processes from sharing one data folder; a server left running by a crashed run is adopted
after a restart.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mailish.domain.errors import ConfigError

log = logging.getLogger(__name__)

SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
RUN_AS_WHEN_ROOT = "postgres"
DB_NAME = "mailish"
DSN_FILE = "dsn"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"
INSTALL_HINT = "install PostgreSQL (apt-get install postgresql) or set MAILISH_DATABASE_URL"


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)


def find_binaries(explicit: Path | None = None) -> Path:
    """The folder holding initdb and pg_ctl: explicit, else the newest Debian one, else PATH."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    else:
        candidates += sorted(
            Path("/").glob(SEARCH_GLOB.lstrip("/")), key=_version_key, reverse=True
        )
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    where = f" in {explicit}" if explicit else ""
    raise ConfigError(
        f"no PostgreSQL server binaries (initdb, pg_ctl) found{where}: {INSTALL_HINT}"
    )


@dataclass
class EmbeddedPostgres:
    """Owns one PostgreSQL cluster folder. ``start()`` returns a DSN; ``stop()`` shuts it down."""

    root: Path
    bin_dir: Path | None = None
    durable: bool = True
    port: int = 5432
    database: str = DB_NAME
    _lock: IO[str] | None = field(default=None, init=False, repr=False)
    _started_here: bool = field(default=False, init=False)
    _run_as: pwd.struct_passwd | None = field(default=None, init=False, repr=False)
    socket_dir: Path | None = field(default=None, init=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.database):
            raise ValueError(f"unsafe database name {self.database!r}")

    def dsn(self, database: str | None = None) -> str:
        assert self.socket_dir is not None, "not started"
        name = database or self.database
        return f"postgresql://postgres@/{name}?host={self.socket_dir}&port={self.port}"

    def start(self) -> str:
        bins = find_binaries(self.bin_dir)
        self._run_as = self._unprivileged_user()
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self.socket_dir = self._choose_socket_dir()
        self._own(self.root)
        if not (self.data / "PG_VERSION").is_file():
            self._initdb(bins)
        self._write_settings()
        if self._pg_ctl(bins, "status", check=False).returncode == 0:
            log.warning("adopting a PostgreSQL left running in %s; restarting it", self.data)
            self._pg_ctl(bins, "stop", "-m", "fast", "-w")
        self._pg_ctl(bins, "start", "-w", "-t", "60", "-l", str(self.log_path))
        self._started_here = True
        self._ensure_database(bins)
        (self.root / DSN_FILE).write_text(self.dsn() + "\n", encoding="utf-8")
        log.info("embedded PostgreSQL running in %s", self.data)
        return self.dsn()

    def stop(self) -> None:
        if self._started_here:
            bins = find_binaries(self.bin_dir)
            self._pg_ctl(bins, "stop", "-m", "fast", "-w", "-t", "60", check=False)
            self._started_here = False
            log.info("embedded PostgreSQL stopped")
        if self._lock is not None:
            (self.root / DSN_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    # -- steps ---------------------------------------------------------------------------

    def _unprivileged_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(RUN_AS_WHEN_ROOT)
        except KeyError:
            raise ConfigError(
                "PostgreSQL cannot run as root and there is no 'postgres' user: "
                f"{INSTALL_HINT}, or run mailish as an ordinary user"
            ) from None

    @classmethod
    def running_dsn(cls, root: Path) -> str | None:
        """The DSN of a server another mailish process runs in ``root``, if any."""
        lock_path, dsn_path = root / "mailish.lock", root / DSN_FILE
        if not lock_path.exists() or not dsn_path.exists():
            return None
        with lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return dsn_path.read_text(encoding="utf-8").strip() or None
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def _take_lock(self) -> None:
        handle = (self.root / "mailish.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"another mailish process is using {self.root}; stop it or set MAILISH_DATA_DIR"
            ) from None
        self._lock = handle

    def _choose_socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred)) <= _SOCKET_PATH_MAX:
            preferred.mkdir(mode=0o700, exist_ok=True)
            return preferred
        return Path(tempfile.mkdtemp(prefix="mailish-pg-"))

    def _own(self, path: Path) -> None:
        """As root: hand the folders to the server's user, and check it can reach them."""
        if self._run_as is None:
            return
        uid, gid = self._run_as.pw_uid, self._run_as.pw_gid
        for item in (self.root, self.socket_dir):
            if item is not None:
                os.chown(item, uid, gid)
                item.chmod(0o700)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ConfigError(
                    f"the 'postgres' user cannot reach {path} because {parent} is not"
                    " searchable by others; set MAILISH_DATA_DIR to a folder outside it"
                )

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        run_as = self._run_as
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
        if run_as is not None:
            env["HOME"] = run_as.pw_dir
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            cwd=str(self.root),
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
            check=False,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            tail = detail[-1] if detail else f"exit {result.returncode}"
            hint = f" (see {self.log_path})" if argv[1:2] == ["start"] or "start" in argv else ""
            raise ConfigError(f"embedded PostgreSQL: {Path(argv[0]).name} failed: {tail}{hint}")
        return result

    def _pg_ctl(
        self, bins: Path, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(bins / "pg_ctl"), "-D", str(self.data), *args], check=check)

    def _initdb(self, bins: Path) -> None:
        log.info("creating a PostgreSQL cluster in %s", self.data)
        self._run(
            [
                str(bins / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ]
            + ([] if self.durable else ["--no-sync"])
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write("\ninclude_if_exists = 'mailish.conf'\n")

    def _write_settings(self) -> None:
        """Rewritten on every start, so a moved socket folder or a changed mode applies."""
        lines = [
            "listen_addresses = ''",
            f"unix_socket_directories = '{self.socket_dir}'",
            "unix_socket_permissions = 0700",
            f"port = {self.port}",
            "max_connections = 200",
        ]
        if not self.durable:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        target = self.data / "mailish.conf"
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self._run_as is not None:
            os.chown(target, self._run_as.pw_uid, self._run_as.pw_gid)

    def _ensure_database(self, bins: Path) -> None:
        psql = bins / "psql"
        exe = str(psql) if psql.is_file() else (shutil.which("psql") or "psql")
        base = [
            exe,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tA",
            "-c",
        ]
        # self.database matched a strict identifier pattern in __post_init__.
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"  # noqa: S608
        exists = self._run([*base, query])
        if exists.stdout.strip() != "1":
            self._run([*base, f'CREATE DATABASE "{self.database}"'])
