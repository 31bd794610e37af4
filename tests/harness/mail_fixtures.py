"""pytest plugin: the real mail servers, started once per test session.

Session fixtures are plain sync fixtures on purpose: the servers run in their own processes
(Dovecot) or threads (aiosmtpd), so they need no event loop and work for sync and async tests.
Each test still gets its own login (``mail_user``, ``smtp_user``), so tests do not see each
other's mail.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.ca import LocalCA, make_ca
from tests.harness.dovecot import Dovecot, DovecotNotInstalledError, MailUser
from tests.harness.smtp import SmtpServer, SmtpUser


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """The one CA behind every test server; ``test_ca.ca_file`` is the MAILISH_TLS_CA_FILE."""
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def dovecot(test_ca: LocalCA) -> Iterator[Dovecot]:
    """A running Dovecot for the whole session (stopped, with all children, at the end).

    Its folder is not under pytest's tmp root: another pytest run on the same machine
    resets that root to 0700, and Dovecot's mail user would lose access mid-run.
    """
    folder = Path(tempfile.mkdtemp(prefix="mailish-test-dovecot-"))
    folder.chmod(0o755)
    try:
        server = Dovecot(folder, test_ca)
    except DovecotNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def smtp_server(test_ca: LocalCA) -> Iterator[SmtpServer]:
    """The aiosmtpd submission server for the whole session.

    Tests that flip ``drop_after_data`` or ``data_size_limit`` should do it with
    ``monkeypatch.setattr`` so the next test gets the defaults back.
    """
    server = SmtpServer(test_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mail_user(dovecot: Dovecot) -> MailUser:
    """A fresh Dovecot user with an empty mailbox (SPECIAL-USE folders appear on first login)."""
    return dovecot.add_user()


@pytest.fixture
def smtp_user(smtp_server: SmtpServer) -> Iterator[SmtpUser]:
    """A fresh SMTP login, removed again after the test."""
    user = smtp_server.add_user()
    yield user
    smtp_server.remove_user(user.name)
