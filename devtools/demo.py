"""`make up`: mailish on the embedded PostgreSQL, syncing a demo mailbox from a local Dovecot.

First run: creates a test CA, a Dovecot in ``<data dir>/demo`` with user ``demo`` and a few
thousand sample messages (nested and Cyrillic folder names), starts ``mailish up``, links the
account and saves its API token. Later runs reuse all of it. A progress bar follows the
initial sync; Ctrl-C stops mailish, its database and Dovecot.

It reuses the test suite's Dovecot and CA harness (tests/harness), which is why it lives in
the repository and not in the mailish package.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.harness.ca import LocalCA, make_ca
from tests.harness.dovecot import Dovecot

USER = "demo"
FOLDERS = {  # folder → messages
    "INBOX": 2500,
    "Sent": 300,
    "Archive": 400,
    "Проекты/Отчёты 2026": 150,
    "Work/2026/Q1": 120,
    "Рассылки": 200,
}
SAMPLES = [
    ("Привет из mailish", "Это демонстрационное письмо с кириллицей.", "INBOX"),
    ("Квартальный отчёт", "Отчёт во вложении.", "Проекты/Отчёты 2026"),
    ("Welcome to mailish", "Your demo mailbox is syncing.", "INBOX"),
]


def free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    if free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_state(path: Path) -> dict[str, object]:
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(path: Path, state: dict[str, object]) -> None:
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)


def start_dovecot(root: Path, ca: LocalCA, state: dict[str, object]) -> Dovecot:
    dovecot = Dovecot(root / "dovecot", ca)
    dovecot.imap_port = pick_port(int(str(state.get("imap_port", 10143))))
    dovecot.imaps_port = pick_port(int(str(state.get("imaps_port", 10993))))
    dovecot.start()
    password = str(state.setdefault("password", secrets.token_urlsafe(12)))
    user = dovecot.add_user(USER, password)
    if not state.get("seeded"):
        print("seeding the demo mailbox (first run only)...", flush=True)
        for n, (folder, count) in enumerate(FOLDERS.items()):
            dovecot.load_maildir(user, count, seed=n + 1, folder=folder)
        for subject, body, folder in SAMPLES:
            raw = (
                f"From: Команда mailish <team@example.org>\r\nTo: demo@localhost\r\n"
                f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
            ).encode()
            dovecot.deliver(user, raw, folder=folder)
        state["seeded"] = True
    state["imap_port"], state["imaps_port"] = dovecot.imap_port, dovecot.imaps_port
    return dovecot


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mailish up exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"mailish up did not become healthy in 60 s; see {log}")


def link(env: dict[str, str], state: dict[str, object]) -> None:
    if state.get("token"):
        return
    command = [
        sys.executable, "-m", "mailish", "accounts", "add", f"{USER}@localhost",
        "--username", USER, "--display-name", "Demo User", "--imap-host", "localhost",
        "--imap-port", str(state["imaps_port"]), "--imap-security", "tls", "--password-stdin",
    ]  # fmt: skip
    done = subprocess.run(
        command, input=f"{state['password']}\n", env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"linking the demo account failed: {done.stderr.strip()}")
    state["token"] = json.loads(done.stdout)["token"]


def progress(base: str, token: str, proc: subprocess.Popen[bytes]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    while proc.poll() is None:
        try:
            sync = httpx.get(f"{base}/v1/account", headers=headers, timeout=2).json()["sync"]
        except (httpx.TransportError, KeyError, ValueError):
            time.sleep(0.5)
            continue
        done, total = sync["messages_synced"], max(sync["messages_total"], 1)
        width = 30
        filled = min(width, int(width * done / total))
        bar = "#" * filled + "." * (width - filled)
        print(
            f"\r  [{bar}] {done}/{sync['messages_total']} messages, "
            f"{sync['folders_synced']}/{sync['folders_total']} folders ",
            end="", flush=True,
        )  # fmt: skip
        finished = sync["folders_total"] and sync["folders_synced"] == sync["folders_total"]
        if finished and done >= sync["messages_total"]:
            print(f"\n  initial sync complete in {time.monotonic() - started:.1f} s", flush=True)
            return
        time.sleep(0.3)


def banner(base: str, token: str, log: Path) -> None:
    print(
        f"""
mailish is up on {base}  (logs: {log})
API token for demo@localhost: {token}

  curl -s {base}/healthz
  curl -s -H 'Authorization: Bearer {token}' {base}/v1/account
  curl -s -H 'Authorization: Bearer {token}' {base}/v1/folders
  curl -s -H 'Authorization: Bearer {token}' '{base}/v1/folders/3/messages?limit=5'
  curl -s -H 'Authorization: Bearer {token}' '{base}/v1/search?q=Отчёт'
  curl -sN -H 'Authorization: Bearer {token}' {base}/v1/events     # live updates
  curl -s {base}/metrics | grep -E '^(missing_users|shards_in_sync|store_errors)'

Ctrl-C stops everything.""",
        flush=True,
    )


def main() -> None:
    data_dir = Path(os.environ.get("MAILISH_DATA_DIR", ".mailish")).resolve()
    root = data_dir / "demo"
    root.mkdir(parents=True, exist_ok=True)
    for folder in (data_dir, root):
        folder.chmod(0o755)  # Dovecot's mail user and PostgreSQL's must reach their folders
    state_path = root / "state.json"
    state = load_state(state_path)
    ca = make_ca(root / "ca") if not (root / "ca" / "ca.pem").exists() else LocalCA(
        root / "ca", root / "ca" / "ca.pem", root / "ca" / "server.pem", root / "ca" / "server.key"
    )  # fmt: skip
    dovecot = start_dovecot(root, ca, state)
    save_state(state_path, state)
    port = os.environ.get("MAILISH_API_PORT", "8080")
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MAILISH_DATA_DIR": str(data_dir),
        "MAILISH_TLS_CA_FILE": str(ca.ca_file),
        "MAILISH_ALLOW_PRIVATE_HOSTS": "1",
    }
    log = data_dir / "mailish.log"
    proc: subprocess.Popen[bytes] | None = None
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    try:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailish", "up"], env=env, stdout=out, stderr=out
            )
        wait_healthy(base, proc, log)
        link(env, state)
        save_state(state_path, state)
        banner(base, str(state["token"]), log)
        progress(base, str(state["token"]), proc)
        proc.wait()
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        dovecot.stop()
    if (
        proc is not None
        and proc.returncode not in (0, None, -signal.SIGTERM)
        and not stop_requested
    ):
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
