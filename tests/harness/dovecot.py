"""A real Dovecot IMAP server in a throwaway folder, for integration and end-to-end tests.

Why a real server: the sync engine's hard parts (CONDSTORE/QRESYNC, IDLE, UIDVALIDITY changes,
MOVE, SPECIAL-USE, XOAUTH2) are exactly the parts a mock gets wrong. Dovecot starts in ~0.3 s,
runs as root without systemd, and keeps everything (config, sockets, logs, mail) in one folder.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from base64 import b64encode, encodebytes
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

from tests.harness.ca import LocalCA
from tests.harness.oauth import TEST_OAUTH_KEY

SPECIAL_USE_FOLDERS: tuple[str, ...] = ("Drafts", "Sent", "Trash", "Junk", "Archive")
MAIL_OWNER = "nobody"  # Dovecot refuses to run mail processes as root; Debian's mail uid
INSTALL_HINT = "apt-get install -y dovecot-imapd"
MASTER_USER = "harness"  # deliver() logs in as "<user>*harness", so user passwords may change


class DovecotNotInstalledError(RuntimeError):
    """The dovecot/doveadm binaries are missing on this machine."""


class DovecotError(RuntimeError):
    """Dovecot did not start, or a doveadm/IMAP helper call failed."""


@dataclass(frozen=True)
class MailUser:
    """A user of the test Dovecot; ``maildir`` is its INBOX on disk."""

    name: str
    password: str
    home: Path
    maildir: Path


def find_binary(name: str) -> str:
    """Locate a Dovecot binary; /usr/sbin is often missing from PATH."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise DovecotNotInstalledError(
            f"{name!r} not found: the IMAP integration tests need a real Dovecot. "
            f"Install it with `{INSTALL_HINT}`."
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A currently unused TCP port on ``host`` (the OS picks; a small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def make_traversable(path: Path) -> None:
    """Let the mail uid and Dovecot's internal users walk down to ``path``.

    pytest creates its temp folders 0700; the imap (nobody) and auth (dovecot) processes need
    at least search permission on every parent folder.
    """
    for folder in (path, *path.parents):
        if folder == Path("/"):
            break
        mode = folder.stat().st_mode & 0o7777
        if mode & 0o011 != 0o011:
            folder.chmod(mode | 0o011)


def encode_imap_utf7(name: str) -> str:
    """Encode a mailbox name in IMAP's modified UTF-7 (RFC 3501 5.1.3), for APPEND/CREATE."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(when: datetime) -> str:
    """An IMAP date-time literal (locale-independent; naive datetimes count as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    month = _MONTHS[when.month - 1]
    return f'"{when.day:02d}-{month}-{when.year:04d} {when:%H:%M:%S %z}"'


def _imap_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- synthetic mail, ported from the reference gen_maildir.py --------------------------------

_WORD_TEXT = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu "
    "Grüße naïve façade"
)
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


def make_message(i: int, rnd: random.Random) -> bytes:
    """Synthetic message number ``i`` (5-20 KB, LF line ends); every 5th has a base64 attachment.

    Deterministic for a given ``rnd`` state, so a seed reproduces the same mailbox.
    """
    size = rnd.randint(5_000, 20_000)
    date = formatdate(1_700_000_000 + i * 60, localtime=False)
    subject = f"Test message {i} " + " ".join(rnd.choice(WORDS[:26]) for _ in range(4))
    header = (
        f"From: Sender {i % 97} <sender{i % 97}@example.org>\n"
        f"To: Alice <alice@example.com>\nSubject: {subject}\nDate: {date}\n"
        f"Message-ID: <msg{i}.{rnd.getrandbits(32):08x}@example.org>\nMIME-Version: 1.0\n"
    )
    if i % 5 == 0:
        boundary = f"b{i}x"
        text = " ".join(rnd.choices(WORDS, k=200))
        attachment = encodebytes(rnd.randbytes(max(1000, (size - 2500) * 3 // 4))).decode()
        body = (
            f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n--{boundary}\n'
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"{text}\n--{boundary}\n"
            f'Content-Type: application/octet-stream; name="f{i}.bin"\n'
            f'Content-Disposition: attachment; filename="f{i}.bin"\n'
            f"Content-Transfer-Encoding: base64\n\n{attachment}--{boundary}--\n"
        )
    else:
        words = rnd.choices(WORDS, k=(size - len(header)) // 6 + 12)
        lines = [" ".join(words[j : j + 12]) for j in range(0, len(words), 12)]
        body = (
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + "\n".join(lines)
            + "\n"
        )
    return (header + body).encode()


# --- process bookkeeping ----------------------------------------------------------------------

_running: set[Dovecot] = set()
_running_lock = threading.Lock()
_names = itertools.count(1)
_maildir_seq = itertools.count(1)


def _kill_all_at_exit() -> None:
    """Backstop: never leave a Dovecot behind, even if a finalizer did not run."""
    with _running_lock:
        servers = list(_running)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(graceful=False)


atexit.register(_kill_all_at_exit)


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork, not in the child


def _die_with_parent() -> None:
    """Runs in the forked child: SIGKILL the master if the test process dies abruptly.

    Backstop for runs that end without atexit (``os._exit`` from pytest-timeout's thread
    method, SIGKILL from CI); the other Dovecot processes exit when their master is gone.
    """
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _in_main_thread() -> bool:
    # PDEATHSIG fires when the forking *thread* exits, so only use it from the main thread.
    return threading.current_thread() is threading.main_thread()


def process_group_members(pgid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of process group ``pgid``, as (pid, cmdline)."""
    members: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        members.append((int(entry.name), cmdline.decode(errors="replace").strip()))
    return members


class Dovecot:
    """One Dovecot instance living entirely in ``folder``.

    Listens on 127.0.0.1 only: ``imap_port`` (plain, STARTTLS offered) and ``imaps_port``
    (implicit TLS), both with the test CA's ``localhost`` certificate.
    """

    def __init__(
        self, folder: Path, ca: LocalCA, *, compress: bool = False, imap_processes: int = 2000
    ) -> None:
        self.dovecot_bin = find_binary("dovecot")
        self.doveadm_bin = find_binary("doveadm")
        self.folder = folder
        self.ca = ca
        self.compress = compress
        self.imap_processes = imap_processes  # one imap process per logged-in connection
        self.host = "127.0.0.1"
        self.imap_port = 0
        self.imaps_port = 0
        self.config_path = folder / "dovecot.conf"
        self.users_dir = folder / "users"  # one JSON file per user, read on every login
        self.master_passwd_path = folder / "master-users"
        self.mail_root = folder / "mail"
        self.run_dir = folder / "run"
        self.log_path = folder / "dovecot.log"
        self.master_out_path = folder / "master.out"
        owner = pwd.getpwnam(MAIL_OWNER)
        self.mail_uid, self.mail_gid = owner.pw_uid, owner.pw_gid
        self._users: dict[str, MailUser] = {}
        self._users_lock = threading.Lock()
        self._master_password = secrets.token_urlsafe(16)
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def master_pid(self) -> int | None:
        """PID of the master, which is also the process group of every Dovecot child."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Write the config and run the master in the foreground (``-F``) in its own session.

        Its own process group lets ``stop()`` kill every child at once; stdin/stdout/stderr go
        to a file, otherwise the master keeps the caller's pipes open.
        """
        if self.is_running:
            return
        self._prepare_folders()
        # The first start picks free ports (retrying if another process grabs one meanwhile);
        # a restart keeps them, so clients configured earlier reconnect to the same server.
        pick_ports = not self.imap_port
        for _attempt in range(3 if pick_ports else 1):
            if pick_ports:
                self.imap_port, self.imaps_port = free_port(), free_port()
            self._write_config()
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / "master.pid").unlink()
            with self.master_out_path.open("ab") as out:
                self._proc = subprocess.Popen(
                    [self.dovecot_bin, "-F", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=_die_with_parent if _in_main_thread() else None,
                )
            with _running_lock:
                _running.add(self)
            if self._wait_ready(timeout):
                return
            self.stop(graceful=False)
            if "Address already in use" not in self._diagnostics():
                break
        raise DovecotError(f"Dovecot did not start:\n{self._diagnostics()}")

    def stop(self, *, graceful: bool = True, timeout: float = 5.0) -> None:
        """Stop the master and all its children, quickly.

        Dovecot's own shutdown takes ~2.5 s because the master lingers on its log process after
        every worker is gone. So: SIGTERM (workers exit at once, mail state stays consistent),
        wait until only master+log remain, then SIGKILL the whole process group.
        ``graceful=False`` skips the SIGTERM step (a crash, for fault tests).
        """
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        if graceful and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                rest = [cmd for pid, cmd in process_group_members(pgid) if pid != pgid]
                if all(cmd.endswith("/log") for cmd in rest):
                    break
                time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while process_group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._proc = None
        with _running_lock:
            _running.discard(self)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "master.pid").unlink()

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> bool:
        """Ready means an ``* OK`` greeting arrives on the plain IMAP port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=2) as s:
                    if s.recv(200).startswith(b"* OK"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.master_out_path, self.log_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-20:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts) or "(no output)"

    # --- configuration --------------------------------------------------------------------------

    def _prepare_folders(self) -> None:
        oauth_keys = self.folder / "oauth" / "default" / "HS256"
        for path in (self.folder, self.run_dir, self.mail_root, oauth_keys):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        make_traversable(self.folder)
        os.chown(self.mail_root, self.mail_uid, self.mail_gid)
        # Dovecot's dict "fs:posix" reads the key base64-encoded, one file per key id.
        (oauth_keys / "default").write_text(b64encode(TEST_OAUTH_KEY).decode())
        (self.folder / "oauth2.conf").write_text(
            "introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={self.folder}/oauth/\n"
            "username_attribute = sub\n"
            "active_attribute =\n"
            "active_value =\n"
        )
        self.master_passwd_path.write_text(f"{MASTER_USER}:{{PLAIN}}{self._master_password}\n")
        self.master_passwd_path.chmod(0o644)
        for sub in ("passdb", "userdb", "tmp"):
            (self.users_dir / sub).mkdir(parents=True, exist_ok=True)
            (self.users_dir / sub).chmod(0o755)
        self.users_dir.chmod(0o755)
        (self.folder / "dict-auth.conf").write_text(
            f"uri = fs:posix:prefix={self.users_dir}/\n"
            "password_key = passdb/%u\n"
            "user_key = userdb/%u\n"
            "iterate_disable = yes\n"
            "default_pass_scheme = PLAIN\n"
        )

    def _write_config(self) -> None:
        mailboxes = "".join(
            f"  mailbox {name} {{\n    special_use = \\{name}\n    auto = subscribe\n  }}\n"
            for name in SPECIAL_USE_FOLDERS
        )
        plugins = "imap_zlib" if self.compress else ""
        self.config_path.write_text(
            f"""# generated by tests/harness/dovecot.py
protocols = imap
listen = {self.host}
base_dir = {self.run_dir}
state_dir = {self.run_dir}
instance_name = mailish-test-{self.imap_port}
log_path = {self.log_path}
auth_verbose = yes
ssl = yes
ssl_cert = <{self.ca.cert_file}
ssl_key = <{self.ca.key_file}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
# wrong-password tests would otherwise wait 2 s each; 2.3.19 still answers failures on its
# 500 ms failure timer, so a failed login takes ~0.5 s
auth_failure_delay = 0
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN {self.master_passwd_path}
}}
# Users live in a dict (one JSON file each), not a passwd-file: Dovecot re-reads a changed
# passwd-file at most once per second, so a user added right after a login was "unknown".
passdb {{
  driver = dict
  mechanisms = plain login
  args = {self.folder}/dict-auth.conf
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.folder}/oauth2.conf
}}
userdb {{
  driver = dict
  args = {self.folder}/dict-auth.conf
}}
first_valid_uid = {self.mail_uid}
mail_location = maildir:~/Maildir
mail_fsync = never
# scale tests hold hundreds of connections from one user and IP
mail_max_userip_connections = 1000
default_process_limit = 1000
default_client_limit = 10000
namespace inbox {{
  inbox = yes
  separator = /
{mailboxes}}}
protocol imap {{
  mail_plugins = $mail_plugins {plugins}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
  # performance mode: a few long-lived login processes proxy all TLS connections
  service_count = 0
  process_min_avail = 2
  client_limit = 1000
}}
service imap {{
  process_limit = {self.imap_processes}
}}
service anvil {{
  chroot =
  # no growing delay after failed logins from 127.0.0.1
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  chroot =
}}
"""
        )

    # --- users ----------------------------------------------------------------------------------

    @property
    def users(self) -> list[MailUser]:
        """Snapshot of the current users."""
        with self._users_lock:
            return list(self._users.values())

    def add_user(self, name: str | None = None, password: str | None = None) -> MailUser:
        """Add a user; it can log in at once (Dovecot reads the user's file on every login)."""
        with self._users_lock:
            if name is None:
                name = f"user{next(_names):04d}"
                while name in self._users:
                    name = f"user{next(_names):04d}"
            elif any(self._key(known) == self._key(name) for known in self._users):
                raise ValueError(f"user {name!r} already exists")
            password = secrets.token_urlsafe(12) if password is None else password
            self._check_name(name)
            self._check_password(password)
            home = self.mail_root / name
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, self.mail_uid, self.mail_gid)
            user = MailUser(name=name, password=password, home=home, maildir=home / "Maildir")
            self._users[name] = user
            self._write_user(user)
            return user

    def set_password(self, name: str, password: str) -> MailUser:
        """Change a user's password (e.g. to simulate revoked credentials); effective at once."""
        self._check_password(password)
        with self._users_lock:
            old = self._users[name]
            user = MailUser(name=name, password=password, home=old.home, maildir=old.maildir)
            self._users[name] = user
            self._write_user(user)
            return user

    def remove_user(self, name: str) -> None:
        """Remove a user (its mail stays on disk); logins fail from now on."""
        with self._users_lock:
            del self._users[name]
            for sub in ("passdb", "userdb"):
                (self.users_dir / sub / self._key(name)).unlink(missing_ok=True)

    @staticmethod
    def _key(name: str) -> str:
        # Dovecot lowercases login names (auth_username_format = %Lu) before the lookup.
        return name.lower()

    @staticmethod
    def _check_name(name: str) -> None:
        """Names become file names, and ``*`` separates the master user in deliver()."""
        if (
            not name
            or name.startswith(".")
            or any(c in name for c in "/*")
            or not name.isprintable()
        ):
            raise ValueError(f"user name must be printable, without '/' or '*': {name!r}")

    @staticmethod
    def _check_password(password: str) -> None:
        if not password or not password.isprintable():
            raise ValueError("password must be non-empty and printable")

    def _write_user(self, user: MailUser) -> None:
        """Write the user's passdb and userdb entries, each replaced atomically."""
        entries = {
            "passdb": {"password": "{PLAIN}" + user.password},
            "userdb": {"uid": self.mail_uid, "gid": self.mail_gid, "home": str(user.home)},
        }
        for sub, fields in entries.items():
            tmp = self.users_dir / "tmp" / f"{sub}-{self._key(user.name)}"
            tmp.write_text(json.dumps(fields))
            tmp.chmod(0o644)
            tmp.replace(self.users_dir / sub / self._key(user.name))

    # --- doveadm and mail -------------------------------------------------------------------------

    def doveadm(self, *args: str, input: bytes | None = None, timeout: float = 30.0) -> str:
        """Run ``doveadm -c <our config> *args``; raise DovecotError with stderr on failure."""
        argv = [self.doveadm_bin, "-c", str(self.config_path), *args]
        done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise DovecotError(
                f"{' '.join(argv)} exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout.decode(errors="replace")

    def deliver(
        self,
        user: MailUser | str,
        raw: bytes,
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        *,
        internal_date: datetime | None = None,
    ) -> int:
        """Put ``raw`` into ``folder`` byte for byte and return its UID.

        Uses IMAP APPEND (LITERAL+, logged in as the master user, so it works whatever the
        user's password is): atomic, returns the UID (APPENDUID), and sets flags and
        INTERNALDATE in one step; ~10 ms, like ``doveadm save``, which cannot return the UID.
        A missing folder is created. Caveats of IMAP itself, not of this helper: Dovecot serves
        every message with CRLF line ends, so only CRLF input comes back byte-identical; NUL
        bytes are not allowed in a literal, so such mail goes through ``doveadm save`` (and
        BODY[] shows each NUL as 0x80).
        """
        name = user.name if isinstance(user, MailUser) else user
        flags = tuple(flags)
        if b"\0" in raw:
            return self._deliver_doveadm(name, raw, folder, flags)
        with _ImapConn(self.host, self.imap_port) as conn:
            conn.command(
                f"LOGIN {_imap_quote(name + '*' + MASTER_USER)} "
                f"{_imap_quote(self._master_password)}"
            )
            mailbox = _imap_quote(encode_imap_utf7(folder))
            parts = [f"APPEND {mailbox}"]
            if flags:
                parts.append("(" + " ".join(flags) + ")")
            if internal_date is not None:
                parts.append(imap_date(internal_date))
            append = " ".join(parts)
            status, text = conn.command(append, literal=raw, check=False)
            if status == "NO" and "[TRYCREATE]" in text:
                conn.command(f"CREATE {mailbox}")
                status, text = conn.command(append, literal=raw, check=False)
            if status != "OK":
                raise DovecotError(f"APPEND to {folder!r} for {name}: {status} {text}")
            conn.command("LOGOUT", check=False)
        match = re.search(r"\[APPENDUID \d+ (\d+)\]", text)
        if match is None:
            raise DovecotError(f"APPEND gave no APPENDUID: {text}")
        return int(match.group(1))

    def _deliver_doveadm(self, name: str, raw: bytes, folder: str, flags: tuple[str, ...]) -> int:
        with contextlib.suppress(DovecotError):
            self.doveadm("mailbox", "create", "-u", name, folder)
        status = self.doveadm("-f", "flow", "mailbox", "status", "-u", name, "uidnext", folder)
        found = re.search(r"uidnext=(\d+)", status)
        if found is None:
            raise DovecotError(f"cannot read uidnext of {folder!r}: {status!r}")
        uid = int(found.group(1))  # racy if something else appends meanwhile; NUL mail is rare
        self.doveadm("save", "-u", name, "-m", folder, input=raw)
        if flags:
            self.doveadm(
                "flags", "add", "-u", name, " ".join(flags), "mailbox", folder, "uid", str(uid)
            )
        return uid

    def mailbox_path(self, user: MailUser | str, folder: str = "INBOX") -> Path:
        """Where ``folder`` lives on disk (Maildir++ with modified-UTF-7 names), created if new."""
        name = user.name if isinstance(user, MailUser) else user
        if folder.upper() != "INBOX":
            with contextlib.suppress(DovecotError):  # already exists
                self.doveadm("mailbox", "create", "-u", name, folder)
        return Path(self.doveadm("mailbox", "path", "-u", name, folder).strip())

    def load_maildir(
        self, user: MailUser | str, n: int, seed: int = 1, folder: str = "INBOX"
    ) -> int:
        """Write ``n`` synthetic messages straight into the Maildir; return the bytes written.

        Direct file writes load 10,000 messages in 2-4 s (APPEND one by one takes ~40 s).
        Dovecot assigns UIDs at the next sync; 2 of 3 messages are \\Seen and the file mtime
        is the INTERNALDATE. Files are chowned to the mail uid.
        """
        if isinstance(user, MailUser) and folder.upper() == "INBOX":
            box = user.maildir
        else:
            box = self.mailbox_path(user, folder)
        for sub in ("", "cur", "new", "tmp"):
            path = box / sub
            if not path.exists():
                path.mkdir(mode=0o700, parents=True)
                os.chown(path, self.mail_uid, self.mail_gid)
        rnd = random.Random(seed)
        host, now, pid = socket.gethostname(), int(time.time()), os.getpid()
        batch = next(_maildir_seq)
        total = 0
        cur = box / "cur"
        for i in range(n):
            msg = make_message(i, rnd)
            total += len(msg)
            flags = "S" if i % 3 else ""
            crlf_size = len(msg) + msg.count(b"\n")
            path = (
                cur / f"{now}.M{batch:04d}{i:08d}P{pid}.{host},S={len(msg)},W={crlf_size}:2,{flags}"
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, msg)
                os.fchown(fd, self.mail_uid, self.mail_gid)
            finally:
                os.close(fd)
            stamp = 1_700_000_000 + i * 60
            os.utime(path, (stamp, stamp))
        return total


class _ImapConn:
    """A minimal blocking IMAP client for the harness: exact literals, no line-end rewriting.

    (imaplib's APPEND turns bare LF/CR into CRLF, which would defeat byte-exact delivery.)
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")
        self._tags = itertools.count(1)
        greeting = self._file.readline()
        if not greeting.startswith(b"* OK"):
            self.__exit__()
            raise DovecotError(f"unexpected IMAP greeting: {greeting!r}")

    def command(
        self, line: str, *, literal: bytes | None = None, check: bool = True
    ) -> tuple[str, str]:
        """Send one command (optionally ending in a LITERAL+ literal); return (status, text)."""
        tag = f"h{next(self._tags)}"
        data = f"{tag} {line}".encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        self._sock.sendall(data + b"\r\n")
        while True:
            reply = self._file.readline()
            if not reply:
                raise DovecotError(f"connection closed during {line.split()[0]}")
            if reply.startswith(tag.encode() + b" "):
                status, _, text = reply.decode(errors="replace")[len(tag) + 1 :].partition(" ")
                if check and status != "OK":
                    raise DovecotError(f"{line.split()[0]} failed: {status} {text.strip()}")
                return status, text.strip()

    def __enter__(self) -> _ImapConn:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()
