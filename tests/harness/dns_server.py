"""A real DNS server on a free loopback UDP port, answering from records a test adds.

Why: discovery must be tested against real DNS answers (SRV, MX, and the A records that map
test names such as ``autoconfig.b.test`` to our loopback servers) without touching the
machine's resolver. dnslib's ``DNSServer`` runs in its own thread, so no event loop is needed.
Unknown names answer NXDOMAIN; known names asked for a missing type answer NOERROR, empty.
"""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


class _Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.records: list[RR] = []
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append((str(qname).rstrip(".").lower(), qtype))
            known = [rr for rr in self.records if rr.rname == qname]
        for rr in known:
            if QTYPE[rr.rtype] == qtype:
                reply.add_answer(rr)
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class LocalDns:
    """``add("x.test. 60 IN A 127.0.0.1")`` lines in zone-file syntax; ``port`` to query."""

    def __init__(self) -> None:
        self._zone = _Zone()
        self._server = DNSServer(
            self._zone, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _line: None)
        )
        self.port: int = self._server.server.server_address[1]

    def add(self, *zone_lines: str) -> None:
        for line in zone_lines:
            self._zone.records.extend(RR.fromZone(line))

    def clear(self) -> None:
        self._zone.records.clear()
        self._zone.queries.clear()

    @property
    def queries(self) -> list[tuple[str, str]]:
        return list(self._zone.queries)

    def start(self) -> None:
        self._server.start_thread()

    def stop(self) -> None:
        self._server.stop()
