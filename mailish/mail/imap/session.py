"""The IMAP operations the sync engine and the operation executor use, over one connection.

Thin typed wrappers: each builds a command, runs it with the connection's deadline and
returns plain dataclasses. Large fetches go in batches (``fetch_*`` take UID lists); nothing
here holds more than one batch in memory.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mailish.domain.errors import ProtocolError
from mailish.domain.utf7 import encode_mailbox_name
from mailish.mail.imap import wire
from mailish.mail.imap.connection import ImapConnection, ImapError, Result

CLIENT_ID = (b'("name" "mailish" "version" "0.1")',)


@dataclass(frozen=True, slots=True)
class ListedMailbox:
    raw_name: str
    delimiter: str | None
    attributes: frozenset[str]
    status: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SelectedMailbox:
    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None
    readonly: bool
    vanished: frozenset[int] = frozenset()
    changed: tuple[FetchedFlags, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchedFlags:
    uid: int
    flags: frozenset[str]
    modseq: int | None


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    uid: int
    flags: frozenset[str]
    raw: bytes
    internaldate: dt.datetime | None
    modseq: int | None
    emailid: str | None
    gm_msgid: str | None


@dataclass(frozen=True, slots=True)
class FetchedHeaders:
    uid: int
    flags: frozenset[str]
    header: bytes
    size: int
    emailid: str | None
    gm_msgid: str | None


def mailbox_arg(path_or_raw: str, *, raw: bool = False) -> bytes:
    name = path_or_raw if raw else encode_mailbox_name(path_or_raw)
    return wire.quote(name)


def uid_set(uids: Iterable[int]) -> bytes:
    """Compact ``1:5,9,12:14`` form of a UID list."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    runs: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        runs.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    runs.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(runs).encode()


def parse_uid_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            continue
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        if b < a:
            a, b = b, a
        if b - a > 10_000_000:
            raise ProtocolError("UID range too large")
        out.update(range(a, b + 1))
    return out


def _int(value: wire.Value) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise ProtocolError(f"expected a number, got {value!r}")
    return int(value)


def _flags(value: wire.Value) -> frozenset[str]:
    if not isinstance(value, list):
        raise ProtocolError("FLAGS is not a list")
    return frozenset(v for v in value if isinstance(v, str))


def _modseq(items: dict[str, wire.Value]) -> int | None:
    value = items.get("MODSEQ")
    if isinstance(value, list) and value:
        return _int(value[0])
    return None


def _first_str(value: wire.Value) -> str | None:
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return value if isinstance(value, str) else None


_DATE = re.compile(r"(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-]\d{4})")
_MONTH_NAMES = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}


def _internaldate(value: wire.Value) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    match = _DATE.fullmatch(value.strip())
    if not match or match[2] not in _MONTHS:
        return None
    day, _, year, hh, mm, ss, zone = match.groups()
    offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
    tz = dt.timezone(offset if zone[0] == "+" else -offset)
    try:
        return dt.datetime(
            int(year), _MONTHS[match[2]], int(day), int(hh), int(mm), int(ss), tzinfo=tz
        )
    except ValueError:
        return None


class ImapSession:
    """Operations on one authenticated connection. Not safe for concurrent use (IMAP isn't)."""

    def __init__(self, conn: ImapConnection) -> None:
        self.conn = conn
        self.selected: str | None = None
        self.qresync = False
        self.condstore = False

    async def enable_extensions(self) -> None:
        wanted = [c for c in ("QRESYNC", "CONDSTORE") if self.conn.has(c)]
        if wanted and self.conn.has("ENABLE"):
            result = await self.conn.command("ENABLE", *[c.encode() for c in wanted])
            enabled = {str(v).upper() for d in result.of("ENABLED") for v in d.values}
            self.qresync = "QRESYNC" in enabled
            self.condstore = self.qresync or "CONDSTORE" in enabled
        else:
            self.condstore = self.conn.has("CONDSTORE")
        if self.conn.has("ID"):
            await self.conn.command("ID", *CLIENT_ID)

    async def list_mailboxes(self) -> list[ListedMailbox]:
        status_items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
        if self.condstore:
            status_items.append("HIGHESTMODSEQ")
        args: list[bytes] = [b'""', b'"*"']
        if self.conn.has("LIST-STATUS"):
            args.append(b"RETURN (SPECIAL-USE STATUS (" + " ".join(status_items).encode() + b"))")
        elif self.conn.has("SPECIAL-USE"):
            args.append(b"RETURN (SPECIAL-USE)")
        result = await self.conn.command("LIST", *args)
        statuses: dict[str, dict[str, int]] = {}
        for data in result.of("STATUS"):
            name, values = data.values[0], data.values[1] if len(data.values) > 1 else []
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if isinstance(name, str) and isinstance(values, list):
                pairs = wire.flatten_pairs(values)
                statuses[name] = {k: _int(v) for k, v in pairs.items() if isinstance(v, str)}
        out: list[ListedMailbox] = []
        for data in result.of("LIST"):
            if len(data.values) < 3:
                raise ProtocolError("short LIST response")
            attrs, delimiter, name = data.values[0], data.values[1], data.values[2]
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            if not isinstance(name, str) or not isinstance(attrs, list):
                raise ProtocolError("malformed LIST response")
            out.append(
                ListedMailbox(
                    raw_name=name,
                    delimiter=delimiter if isinstance(delimiter, str) else None,
                    attributes=frozenset(a.lower() for a in attrs if isinstance(a, str)),
                    status=statuses.get(name, {}),
                )
            )
        return out

    async def select(
        self,
        raw_name: str,
        *,
        readonly: bool = True,
        known: tuple[int, int] | None = None,
    ) -> SelectedMailbox:
        """SELECT/EXAMINE; with ``known=(uidvalidity, modseq)`` and QRESYNC, the server also
        reports what vanished and which flags changed since that modseq."""
        args: list[bytes] = [mailbox_arg(raw_name, raw=True)]
        if known is not None and self.qresync:
            args.append(b"(QRESYNC (%d %d))" % known)
        elif self.condstore and not self.qresync:
            args.append(b"(CONDSTORE)")
        self.selected = None  # a failed SELECT leaves no mailbox selected (RFC 3501 6.3.1)
        result = await self.conn.command("EXAMINE" if readonly else "SELECT", *args)
        self.selected = raw_name
        codes = [result.status, *(u for u in self._drain_status())]
        info: dict[str, wire.Value] = {}
        for code in codes:
            if code.code and code.code_args:
                info[code.code] = code.code_args[0]
            elif code.code:
                info[code.code] = None
        exists = 0
        vanished: set[int] = set()
        changed: list[FetchedFlags] = []
        for data in result.data:
            if data.kind == "EXISTS" and data.number is not None:
                exists = data.number
            elif data.kind == "VANISHED":
                vanished |= _vanished(data)
            elif data.kind == "FETCH":
                flags = _fetch_flags(data)
                if flags is not None:
                    changed.append(flags)
        if "UIDVALIDITY" not in info:
            raise ProtocolError(f"SELECT {raw_name!r} returned no UIDVALIDITY")
        hms = info.get("HIGHESTMODSEQ")
        return SelectedMailbox(
            uidvalidity=_int(info["UIDVALIDITY"]),
            uidnext=_int(info["UIDNEXT"]) if info.get("UIDNEXT") is not None else None,
            exists=exists,
            highestmodseq=_int(hms) if isinstance(hms, str) else None,
            readonly=result.status.code == "READ-ONLY",
            vanished=frozenset(vanished),
            changed=tuple(changed),
        )

    async def unselect(self) -> None:
        """Leave the selected mailbox without expunging (UNSELECT, RFC 3691)."""
        if self.selected is None or not self.conn.has("UNSELECT"):
            return
        self.selected = None
        try:
            await self.conn.command("UNSELECT")
        except ImapError as exc:
            # Nothing was selected after all (e.g. the mailbox vanished): that is the goal.
            if exc.response.status not in ("NO", "BAD"):
                raise

    def _drain_status(self) -> list[wire.StatusResponse]:
        """Untagged OK responses with codes (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) from SELECT."""
        kept: list[wire.StatusResponse] = []
        rest = []
        while self.conn.unsolicited:
            item = self.conn.unsolicited.popleft()
            if isinstance(item, wire.StatusResponse) and item.tag is None and item.code:
                kept.append(item)
            else:
                rest.append(item)
        self.conn.unsolicited.extend(rest)
        return kept

    async def search_uids(self, criteria: bytes) -> list[int]:
        esearch = self.conn.has("ESEARCH")
        args = [b"RETURN (ALL)", criteria] if esearch else [criteria]
        result = await self.conn.command("UID SEARCH", *args)
        uids: set[int] = set()
        for data in result.data:
            if data.kind == "SEARCH":
                uids.update(_int(v) for v in data.values if isinstance(v, str) and v.isdigit())
            elif data.kind == "ESEARCH":
                # * ESEARCH (TAG "M5") UID ALL 1:12,20 — the correlator and the UID marker
                # are not name/value pairs.
                items = [
                    v for v in data.values
                    if not isinstance(v, list) and not (isinstance(v, str) and v.upper() == "UID")
                ]  # fmt: skip
                all_ = wire.flatten_pairs(items).get("ALL")
                if isinstance(all_, str):
                    uids |= parse_uid_set(all_)
        return sorted(uids)

    async def fetch_messages(self, uids: Sequence[int]) -> list[FetchedMessage]:
        items = b"(UID FLAGS INTERNALDATE BODY.PEEK[]"
        if self.condstore:
            items += b" MODSEQ"
        if self.conn.has("OBJECTID"):
            items += b" EMAILID"
        if self.conn.has("X-GM-EXT-1"):
            items += b" X-GM-MSGID"
        result = await self.conn.command("UID FETCH", uid_set(uids), items + b")")
        out: list[FetchedMessage] = []
        for data in result.of("FETCH"):
            pairs = _pairs(data)
            body = pairs.get("BODY[]")
            if "UID" not in pairs or not isinstance(body, bytes | str):
                continue  # a flag update for another message, or an expunged one
            out.append(
                FetchedMessage(
                    uid=_int(pairs["UID"]),
                    flags=_flags(pairs.get("FLAGS", [])),
                    raw=body if isinstance(body, bytes) else body.encode(),
                    internaldate=_internaldate(pairs.get("INTERNALDATE")),
                    modseq=_modseq(pairs),
                    emailid=_first_str(pairs.get("EMAILID")),
                    gm_msgid=_first_str(pairs.get("X-GM-MSGID")),
                )
            )
        return out

    async def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE per UID (cheap: servers keep it), to plan fetches by bytes."""
        result = await self.conn.command("UID FETCH", uid_set(uids), b"(UID RFC822.SIZE)")
        sizes: dict[int, int] = {}
        for data in result.of("FETCH"):
            pairs = _pairs(data)
            if "UID" in pairs and "RFC822.SIZE" in pairs:
                sizes[_int(pairs["UID"])] = _int(pairs["RFC822.SIZE"])
        return sizes

    async def fetch_headers(self, uids: Sequence[int], fields: bytes) -> list[FetchedHeaders]:
        items = b"(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (" + fields + b")]"
        if self.conn.has("OBJECTID"):
            items += b" EMAILID"
        if self.conn.has("X-GM-EXT-1"):
            items += b" X-GM-MSGID"
        result = await self.conn.command("UID FETCH", uid_set(uids), items + b")")
        out: list[FetchedHeaders] = []
        for data in result.of("FETCH"):
            pairs = _pairs(data)
            header = next((v for k, v in pairs.items() if k.startswith("BODY[HEADER")), None)
            if "UID" not in pairs or header is None:
                continue
            out.append(
                FetchedHeaders(
                    uid=_int(pairs["UID"]),
                    flags=_flags(pairs.get("FLAGS", [])),
                    header=header if isinstance(header, bytes) else str(header).encode(),
                    size=_int(pairs.get("RFC822.SIZE", "0")),
                    emailid=_first_str(pairs.get("EMAILID")),
                    gm_msgid=_first_str(pairs.get("X-GM-MSGID")),
                )
            )
        return out

    async def fetch_flags(
        self, uid_range: bytes, *, changedsince: int | None = None
    ) -> tuple[list[FetchedFlags], frozenset[int]]:
        """Flags for a UID range; with CONDSTORE only those changed since a modseq, and with
        QRESYNC also the UIDs that vanished (expunged) since then."""
        modifiers = b""
        if changedsince is not None and self.condstore:
            modifiers = b" (CHANGEDSINCE %d%s)" % (
                changedsince,
                b" VANISHED" if self.qresync else b"",
            )
        items = b"(UID FLAGS MODSEQ)" if self.condstore else b"(UID FLAGS)"
        result = await self.conn.command("UID FETCH", uid_range, items + modifiers)
        flags = [f for f in (_fetch_flags(d) for d in result.of("FETCH")) if f is not None]
        vanished: set[int] = set()
        for data in result.of("VANISHED"):
            vanished |= _vanished(data)
        return flags, frozenset(vanished)

    # -- modifying commands (operations, sending) ---------------------------------------

    async def store_flags(self, uids: Sequence[int], mode: str, flags: Iterable[str]) -> None:
        if mode not in {"+FLAGS.SILENT", "-FLAGS.SILENT", "FLAGS.SILENT"}:
            raise ValueError(mode)
        await self.conn.command(
            "UID STORE", uid_set(uids), mode.encode(), b"(" + " ".join(flags).encode() + b")"
        )

    async def move(self, uids: Sequence[int], target_raw: str) -> dict[int, int]:
        """Move, returning old UID → new UID when the server reports COPYUID (UIDPLUS)."""
        target = mailbox_arg(target_raw, raw=True)
        if self.conn.has("MOVE"):
            result = await self.conn.command("UID MOVE", uid_set(uids), target)
            codes = [result.status, *self._drain_status()]
        else:
            result = await self.conn.command("UID COPY", uid_set(uids), target)
            codes = [result.status]
            await self.store_flags(uids, "+FLAGS.SILENT", ["\\Deleted"])
            await self.expunge(uids)
        return _copyuid(codes)

    async def expunge(self, uids: Sequence[int]) -> None:
        if self.conn.has("UIDPLUS"):
            await self.conn.command("UID EXPUNGE", uid_set(uids))
        else:
            await self.conn.command("EXPUNGE")

    async def append(
        self,
        raw_name: str,
        message: bytes,
        *,
        flags: Iterable[str] = (),
        when: dt.datetime | None = None,
    ) -> int | None:
        """APPEND; returns the new UID when the server reports APPENDUID."""
        args: list[bytes] = [mailbox_arg(raw_name, raw=True)]
        flag_list = list(flags)
        if flag_list:
            args.append(b"(" + " ".join(flag_list).encode() + b")")
        if when is not None:
            args.append(b'"' + when.strftime("%d-%b-%Y %H:%M:%S %z").encode() + b'"')
        result = await self.conn.command("APPEND", *args, literal=message)
        if result.status.code == "APPENDUID" and len(result.status.code_args) >= 2:
            return _int(result.status.code_args[1])
        return None

    async def create(self, raw_name: str) -> None:
        await self.conn.command("CREATE", mailbox_arg(raw_name, raw=True))

    async def rename(self, old_raw: str, new_raw: str) -> None:
        await self.conn.command(
            "RENAME", mailbox_arg(old_raw, raw=True), mailbox_arg(new_raw, raw=True)
        )

    async def delete(self, raw_name: str) -> None:
        await self.conn.command("DELETE", mailbox_arg(raw_name, raw=True))

    async def noop(self) -> Result:
        return await self.conn.command("NOOP")


def _pairs(data: wire.DataResponse) -> dict[str, wire.Value]:
    if not data.values or not isinstance(data.values[0], list):
        raise ProtocolError("FETCH without a parenthesised list")
    return wire.flatten_pairs(data.values[0])


def _fetch_flags(data: wire.DataResponse) -> FetchedFlags | None:
    pairs = _pairs(data)
    if "UID" not in pairs or "FLAGS" not in pairs:
        return None
    return FetchedFlags(_int(pairs["UID"]), _flags(pairs["FLAGS"]), _modseq(pairs))


def _vanished(data: wire.DataResponse) -> set[int]:
    last = data.values[-1] if data.values else None
    return parse_uid_set(last) if isinstance(last, str) else set()


def _copyuid(codes: Iterable[wire.StatusResponse]) -> dict[int, int]:
    for code in codes:
        if code.code == "COPYUID" and len(code.code_args) >= 3:
            src, dst = code.code_args[1], code.code_args[2]
            if isinstance(src, str) and isinstance(dst, str):
                old = sorted(parse_uid_set(src))
                new = sorted(parse_uid_set(dst))
                if len(old) == len(new):
                    return dict(zip(old, new, strict=True))
    return {}


__all__ = ["ImapError", "ImapSession"]
