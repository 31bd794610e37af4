"""The message read API over real uvicorn, PostgreSQL and Dovecot: listings, one message, raw
bytes, attachment downloads and full-text search."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.policy
import imaplib
import ssl
import urllib.parse
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import format_datetime

import httpx

from mailish.domain.buckets import BucketLease
from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.ids import BucketNo, Epoch
from mailish.domain.logins import PasswordLogin
from mailish.mail.credentials import KeyRing
from mailish.mail.imap.connection import ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.mail.policy import ConnectionPolicy
from mailish.services.linking import LinkRequest, link
from mailish.store import claims
from mailish.store import messages as stored_messages
from mailish.store.connecting import Pool
from tests.harness.ca import LocalCA
from tests.harness.dovecot import Dovecot
from tests.integration.conftest import BUCKETS, Linked, RunningApi

PDF_NAME = "Отчёт за март.pdf"
PDF_BYTES = b"%PDF-1.4\n" + bytes(range(256)) * 200 + b"\n%%EOF\n"  # big enough to parse off-loop


async def link_account(
    db_pool: Pool, dovecot: Dovecot, keyring: KeyRing, policy: ConnectionPolicy
) -> Linked:
    """Another account on a fresh Dovecot user, linked the way the ``linked`` fixture does."""
    user = dovecot.add_user()
    endpoint = Endpoint("localhost", dovecot.imaps_port, Security.TLS)
    result = await link(
        db_pool,
        LinkRequest(email=f"{user.name}@example.test", password=user.password, imap=endpoint,
                    smtp=None, username=user.name),
        keyring=keyring, policy=policy, buckets=BUCKETS,
    )  # fmt: skip
    lease = BucketLease(BucketNo(result.bucket), "test-worker", Epoch(1))
    async with db_pool.acquire() as conn:
        await claims.claim(conn, lease)
    imap = ImapSettings(endpoint, ca_files=policy.ca_files, allow_private_hosts=True, timeout=15)
    return Linked(result.account_id, result.token, lease, user, imap)


async def sync_and_index(db_pool: Pool, account: Linked) -> None:
    """One full sync over the account's own IMAP session, then the full-text indexer."""
    conn = await ImapConnection.open(account.imap)
    try:
        await conn.login(PasswordLogin(account.user.name, account.user.password))
        session = ImapSession(conn)
        await session.enable_extensions()
        await account.sync(db_pool).sync_all(session)
    finally:
        await conn.logout()
    async with db_pool.acquire() as db:
        while await stored_messages.index_pending(db, account_id=account.account_id):  # type: ignore[arg-type]
            pass


def rich_message(*, subject: str, sender: str, body_word: str, when: dt.datetime) -> bytes:
    """Text and hostile html alternatives, a PDF with a Cyrillic name and an html attachment."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = f"Carol Finance <{sender}>"
    msg["To"] = "Alice <alice@example.com>"
    msg["Cc"] = "Bob <bob@example.com>"
    msg["Reply-To"] = "replies@example.com"
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.org>"
    msg["In-Reply-To"] = "<parent@example.org>"
    msg["References"] = "<root@example.org> <parent@example.org>"
    msg.set_content(f"Plain body with the word {body_word}.\n")
    msg.add_alternative(
        "<p>Hello <b>bold</b> <a href='https://example.com/'>site</a></p>"
        "<script>alert('s')</script><img src=x onerror=\"alert('e')\">"
        "<a href=\"javascript:alert('j')\">click</a><div onclick='alert(1)'>div</div>",
        subtype="html",
    )
    msg.add_attachment(PDF_BYTES, maintype="application", subtype="pdf", filename=PDF_NAME)
    msg.add_attachment("<script>alert(1)</script>", subtype="html", filename="page.html")
    return msg.as_bytes(policy=email.policy.SMTP)


def plain_message(subject: str, sender: str, body: str, when: dt.datetime) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <alice@example.com>\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(when)}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
        f"\r\n{body}\r\n"
    ).encode()


async def walk(client: httpx.AsyncClient, path: str, **params: object) -> list[dict[str, object]]:
    """Every item of a paged listing, following next_cursor to the end."""
    items: list[dict[str, object]] = []
    cursor: str | None = None
    while True:
        page = await client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        items.extend(body["messages"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert len(body["messages"]) == params.get("limit", 50)


async def test_listing_pages_newest_first_each_message_once(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked, test_ca: LocalCA
) -> None:
    dovecot.load_maildir(linked.user, 205)
    await sync_and_index(db_pool, linked)
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        folders = (await client.get("/v1/folders")).json()
        inbox = next(f for f in folders["folders"] if f["role"] == "inbox")
        path = f"/v1/folders/{inbox['id']}/messages"

        items = await walk(client, path, limit=50)
        assert len(items) == 205 and len({m["id"] for m in items}) == 205
        numbers = [int(str(m["subject"]).split()[2]) for m in items]
        assert numbers == list(range(204, -1, -1))  # the loader dates message i at i minutes
        dates = [dt.datetime.fromisoformat(str(m["date"])) for m in items]
        assert dates == sorted(dates, reverse=True)
        first = items[0]
        assert set(first) == {"id", "folder_id", "subject", "from", "to", "date", "seen",
                              "flagged", "snippet", "has_attachments", "size"}  # fmt: skip
        assert first["from"] == [{"name": "Sender 10", "email": "sender10@example.org"}]
        assert first["to"] == [{"name": "Alice", "email": "alice@example.com"}]
        assert first["folder_id"] == inbox["id"] and first["snippet"]
        assert [m["has_attachments"] for m in items[:5]] == [False, False, False, False, True]

        page = (await client.get(path)).json()
        assert len(page["messages"]) == 50 and page["state"] == folders["state"]
        assert len((await client.get(path, params={"limit": 1000})).json()["messages"]) == 200
        assert len((await client.get(path, params={"limit": 0})).json()["messages"]) == 1
        empty_cursor = await client.get(path, params={"limit": 7, "cursor": ""})
        assert len(empty_cursor.json()["messages"]) == 7

        for bad in ("not a cursor!", "AAAA", "MS4w", "x" * 200):
            answer = await client.get(path, params={"cursor": bad})
            assert answer.status_code == 422, bad
            assert answer.json()["error"] == "invalid_cursor"
        missing = await client.get("/v1/folders/987654321/messages")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"

        # An expunged message stays behind as a tombstone; it is never listed or served.
        gone = items[0]
        with server_inbox(dovecot, linked, test_ca) as imap:
            _, found = imap.search(None, "SUBJECT", '"Test message 204 "')
            imap.store(found[0].decode(), "+FLAGS", "\\Deleted")
            imap.expunge()
        await sync_and_index(db_pool, linked)
        after = await walk(client, path, limit=200)
        assert [m["id"] for m in after] == [m["id"] for m in items[1:]]
        assert (await client.get(f"/v1/messages/{gone['id']}")).status_code == 404
        assert (await client.get(f"/v1/messages/{gone['id']}/raw")).status_code == 404


@contextlib.contextmanager
def server_inbox(dovecot: Dovecot, account: Linked, ca: LocalCA) -> Iterator[imaplib.IMAP4_SSL]:
    """The server's INBOX through the standard library's IMAP client, independent of ours."""
    context = ssl.create_default_context(cafile=ca.ca_file)
    imap = imaplib.IMAP4_SSL("localhost", dovecot.imaps_port, ssl_context=context)
    try:
        imap.login(account.user.name, account.user.password)
        assert imap.select("INBOX")[0] == "OK"
        yield imap
    finally:
        imap.logout()


def _parts(raw: bytes) -> list[bytes]:
    """Attachment bytes as the standard library decodes them, independent of our parser."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return [part.get_payload(decode=True) for part in parsed.iter_attachments()]


async def test_read_message_raw_and_attachments(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked, test_ca: LocalCA
) -> None:
    when = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)
    raw = rich_message(
        subject="Quarterly report", sender="carol@finance.example", body_word="zeppelin",
        when=when,
    )  # fmt: skip
    uid = dovecot.deliver(linked.user, raw)
    await sync_and_index(db_pool, linked)
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        folders = (await client.get("/v1/folders")).json()["folders"]
        inbox = next(f for f in folders if f["role"] == "inbox")
        listed = (await client.get(f"/v1/folders/{inbox['id']}/messages")).json()["messages"]
        assert [m["subject"] for m in listed] == ["Quarterly report"]
        assert listed[0]["has_attachments"] is True
        message_id = listed[0]["id"]

        body = (await client.get(f"/v1/messages/{message_id}")).json()
        assert body["subject"] == "Quarterly report" and body["folder_id"] == inbox["id"]
        assert body["from"] == [{"name": "Carol Finance", "email": "carol@finance.example"}]
        assert body["cc"] == [{"name": "Bob", "email": "bob@example.com"}]
        assert body["reply_to"] == [{"name": "", "email": "replies@example.com"}]
        assert dt.datetime.fromisoformat(body["date"]) == when
        assert body["in_reply_to"] == ["parent@example.org"]
        assert body["references"] == ["root@example.org", "parent@example.org"]
        assert body["seen"] is False and body["flagged"] is False
        assert "zeppelin" in body["text"]
        assert body["parse_defects"] == []
        html = body["html"]
        assert "<b>bold</b>" in html and 'href="https://example.com/"' in html
        for hostile in ("<script", "alert(", "onerror", "onclick", "javascript:"):
            assert hostile not in html.lower(), hostile
        attachments = body["attachments"]
        assert [(a["filename"], a["content_type"]) for a in attachments] == [
            (PDF_NAME, "application/pdf"), ("page.html", "text/html"),
        ]  # fmt: skip
        assert attachments[0]["size"] == len(PDF_BYTES)

        raw_answer = await client.get(f"/v1/messages/{message_id}/raw")
        assert raw_answer.status_code == 200
        assert raw_answer.headers["content-type"] == "message/rfc822"
        with server_inbox(dovecot, linked, test_ca) as imap:
            fetched = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")[1][0]
        assert isinstance(fetched, tuple)
        assert raw_answer.content == fetched[1] == raw

        pdf = await client.get(f"/v1/messages/{message_id}/attachments/{attachments[0]['id']}")
        assert pdf.status_code == 200 and pdf.content == PDF_BYTES == _parts(raw)[0]
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.headers["x-content-type-options"] == "nosniff"
        encoded = urllib.parse.quote(PDF_NAME, safe="")
        assert pdf.headers["content-disposition"] == (
            f"attachment; filename=\"_____ __ ____.pdf\"; filename*=UTF-8''{encoded}"
        )
        page = await client.get(f"/v1/messages/{message_id}/attachments/{attachments[1]['id']}")
        assert page.headers["content-type"] == "application/octet-stream"
        assert page.content == _parts(raw)[1] == b"<script>alert(1)</script>\r\n"
        assert page.headers["x-content-type-options"] == "nosniff"

        unknown = await client.get(f"/v1/messages/{message_id}/attachments/987654321")
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
        assert (await client.get("/v1/messages/987654321")).status_code == 404
        assert (await client.get("/v1/messages/not-a-number")).status_code == 422


async def test_a_broken_message_is_shown_best_effort_with_its_defects(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked
) -> None:
    raw = (
        b'From: "unclosed <a@example.org>\r\nSubject: broken\r\nDate: Sun, 1 Mar 2026 '
        b'09:30:00 +0000\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n--XX\r\n'
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nhello there\r\n"
    )
    dovecot.deliver(linked.user, raw)
    await sync_and_index(db_pool, linked)
    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        inbox = next(f for f in (await client.get("/v1/folders")).json()["folders"]
                     if f["role"] == "inbox")  # fmt: skip
        [listed] = (await client.get(f"/v1/folders/{inbox['id']}/messages")).json()["messages"]
        body = (await client.get(f"/v1/messages/{listed['id']}")).json()
        raw_answer = await client.get(f"/v1/messages/{listed['id']}/raw")
    assert body["subject"] == "broken" and "hello there" in body["text"]
    assert body["parse_defects"] == [
        "multipart-missing-closing-boundary", "charset-unknown:no-such-charset",
    ]  # fmt: skip
    assert raw_answer.content == raw


async def test_search_by_subject_sender_and_body_within_the_account(
    api: RunningApi, db_pool: Pool, dovecot: Dovecot, linked: Linked, keyring: KeyRing,
    policy: ConnectionPolicy,
) -> None:  # fmt: skip
    base = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    mails = [  # (subject, sender, body), one hour apart
        ("Quarterly numbers", "dave@example.org", "see below"),
        ("Lunch", "carol@finance.example", "tacos today"),
        ("Travel", "erin@example.org", "the zeppelin leaves"),
        ("Quarterly plans", "frank@example.org", "more"),
    ]
    for hours, mail in enumerate(mails):
        dovecot.deliver(linked.user, plain_message(*mail, base + dt.timedelta(hours=hours)))
    other = await link_account(db_pool, dovecot, keyring, policy)
    secret = plain_message("Quarterly secrets", "carol@finance.example", "zeppelin", base)
    dovecot.deliver(other.user, secret)
    await sync_and_index(db_pool, linked)
    await sync_and_index(db_pool, other)

    async def subjects(token: str, q: str, **params: object) -> list[object]:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
            return [m["subject"] for m in await walk(client, "/v1/search", q=q, **params)]

    newest_first = ["Quarterly plans", "Quarterly numbers"]
    assert await subjects(linked.token, "quarterly") == newest_first
    assert await subjects(linked.token, "quarterly", limit=1) == newest_first
    assert await subjects(linked.token, "carol@finance.example") == ["Lunch"]
    assert await subjects(linked.token, "zeppelin") == ["Travel"]
    assert await subjects(linked.token, "quarterly -plans") == ["Quarterly numbers"]
    assert await subjects(linked.token, "nothing-like-this") == []
    assert await subjects(other.token, "quarterly") == ["Quarterly secrets"]
    assert await subjects(other.token, "zeppelin") == ["Quarterly secrets"]

    headers = {"Authorization": f"Bearer {linked.token}"}
    async with httpx.AsyncClient(base_url=api.base, headers=headers) as client:
        for q in ("", "   "):
            answer = await client.get("/v1/search", params={"q": q})
            assert answer.status_code == 422 and answer.json()["error"] == "invalid_query"
        assert (await client.get("/v1/search")).status_code == 422
        bad = await client.get("/v1/search", params={"q": "x", "cursor": "%%%"})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_cursor"
