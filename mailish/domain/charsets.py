"""Best-effort bytes-to-text decoding for mail: charsets, transfer encodings, RFC 2047 words.

Why this exists: real mail lies. Parts labelled utf-8 carry windows-1251, koi8-r and cp1251 get
swapped, vendors invent charset aliases Python has never heard of, base64 arrives badly padded and
headers contain raw 8-bit bytes. Every function here turns bytes into *some* text, never raises
on bad input, and reports how it had to guess as short defect strings so the parser can record
them. Pure: standard library only, no I/O.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import itertools
import re
from collections.abc import Iterator

# Vendor/legacy labels Python does not know, and labels better served by a superset codec.
_ALIASES: dict[str, str] = {
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-ukrainian": "mac-cyrillic",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601-1989": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "euc-cn": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp": "iso2022_jp_ext",
    "unicode-1-1-utf-7": "utf-7",
    "utf7": "utf-7",
    "iso-8859-8-i": "iso8859-8",
    "tis-620": "cp874",
    "ansi_x3.4-1968": "ascii",
}
_WINDOWS = re.compile(r"(?:x-)?(?:win|windows|cp|ms)[-_]?(125\d|874|866|932|949|950)")
_NOT_TEXT = frozenset({"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined"})
_PAIR = ("cp1251", "koi8-r")

# Relative frequency (percent) of lowercase Russian letters; used to judge which decoding of a
# single-byte Cyrillic text is plausible, since koi8-r and cp1251 both decode any byte.
# fmt: off
_FREQ: dict[str, float] = dict(zip("оеаинтсрвлкмдпуяыьгзбчйхжшюцщэфъё", (
    10.97, 8.45, 8.01, 7.35, 6.7, 6.26, 5.47, 4.73, 4.54, 4.4, 3.49, 3.21, 2.98, 2.81, 2.62, 2.01,
    1.9, 1.74, 1.7, 1.65, 1.59, 1.44, 1.21, 0.97, 0.94, 0.73, 0.64, 0.48, 0.36, 0.32, 0.26, 0.04,
    0.04,
), strict=True))
# fmt: on
_WORD = re.compile(r"[^\W\d_]+")
_CYR = re.compile(r"[\u0400-\u04ff]+")
_NON_ASCII_LETTER = re.compile(r"[^\W\d_\x00-\x7f]")
_SAMPLE = 64 * 1024
# Scoring runs in Python per word: 400 letters (60-odd words) tell the pair apart, and the
# cap keeps a message of 2,000 small unlabelled Cyrillic parts from costing 60 ms per part.
_SCORED_LETTERS = 400
_ZEROS = itertools.repeat(0.0)

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?]*)\?=")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_JUNK = bytes(b for b in range(256) if b not in _B64_ALPHABET)
_B64_BAD = re.compile(rb"[^A-Za-z0-9+/=\s]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9._:+-]")


def _label(name: str) -> str:
    return _LABEL_SAFE.sub("?", name)[:40]


@functools.lru_cache(maxsize=256)
def lookup_charset(name: str) -> str | None:
    """Map a declared charset label to a usable Python text codec name, or None if unknown."""
    key = name.strip().strip("\"'").split("*", 1)[0].strip().lower()
    if not key or len(key) > 64:
        return None
    key = _ALIASES.get(key, key)
    m = _WINDOWS.fullmatch(key)
    if m:
        key = "cp" + m.group(1)
    for candidate in (key, key[2:] if key.startswith("x-") else None):
        if not candidate:
            continue
        try:
            codec = codecs.lookup(_ALIASES.get(candidate, candidate)).name
        except (LookupError, ValueError, TypeError, UnicodeError):
            continue
        try:
            b"a".decode(codec)  # rejects bytes-to-bytes codecs such as zlib or base64
        except UnicodeError:
            pass  # a text codec that merely dislikes this probe (utf-16, "undefined")
        except (LookupError, ValueError, TypeError):
            continue
        return None if codec in _NOT_TEXT else codec
    return None


def _non_ascii_words(text: str) -> Iterator[str]:
    """The words holding a non-ASCII letter. ASCII stretches are skipped by the regex engine:
    stepping through every word in Python cost 6 ms per 30 KB part of mostly-ASCII text."""
    pos = 0
    while hit := _NON_ASCII_LETTER.search(text, pos):
        i = hit.start()
        word = next(m for m in _WORD.finditer(text, max(pos, i - 64)) if m.end() > i)
        pos = word.end()
        yield word.group()  # (a word longer than 64 letters comes cut at the front)


def _plausibility(text: str) -> tuple[float, float]:
    """Score text as Russian: (letter-frequency score, share of non-ASCII letters that look real).

    Words must be wholly Cyrillic and cased like prose (lower, Title or UPPER); a mis-decoded
    text yields case-scrambled words ("рТЙЧЕФ") or rare letters, and latin text with accents
    yields mixed-script words ("cafй").
    """
    score = 0.0
    good = total = 0
    for word in _non_ascii_words(text):
        if total >= _SCORED_LETTERS:
            break
        total += len(word)
        if not _CYR.fullmatch(word):
            continue
        if word.islower() or word.istitle():
            factor = 1.0
        elif word.isupper():
            factor = 0.7
        else:
            factor = 0.1
        if factor > 0.5:
            good += len(word)
        score += factor * sum(map(_FREQ.get, word.lower(), _ZEROS))
    return score, (good / total if total else 0.0)


def guess_cyrillic(data: bytes, prefer: str | None = None) -> str | None:
    """Pick cp1251 or koi8-r for bytes that look like Russian text, else None.

    When `prefer` (the declared codec) is one of the pair, the other must win clearly.
    """
    sample = data[:_SAMPLE]
    scored = {c: _plausibility(sample.decode(c, "replace")) for c in _PAIR}
    best = max(_PAIR, key=lambda c: scored[c][0])
    score, share = scored[best]
    if share < 0.5 or score <= 0.0:
        return None
    if prefer in scored and prefer != best and score < 1.3 * scored[prefer][0] + 5.0:
        return prefer
    return best


def decode_text(data: bytes, declared: str | None) -> tuple[str, str | None]:
    """Decode bytes to text, returning (text, defect or None). Never raises.

    Chain: declared charset strictly, then utf-8, then a cp1251/koi8-r guess, then
    windows-1252 (when it decodes) or latin-1. `declared=None` means "unlabelled": no defect
    unless guessing beyond utf-8 was needed.
    """
    codec = lookup_charset(declared) if declared else None
    label = _label(declared) if declared else "none"
    if codec is not None:
        try:
            text = data.decode(codec)
        except (UnicodeError, LookupError, ValueError):
            pass
        else:
            if codec in _PAIR and not data.isascii():
                guess = guess_cyrillic(data, prefer=codec)
                if guess is not None and guess != codec:
                    return data.decode(guess, "replace"), f"charset-mislabelled:{label}->{guess}"
            return text, None
    if data.isascii():
        return data.decode("ascii"), (f"charset-unknown:{label}" if declared else None)
    try:
        text, chosen = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        chosen = guess_cyrillic(data) or ""
        if chosen:
            text = data.decode(chosen, "replace")
        else:
            try:
                text, chosen = data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                text, chosen = data.decode("latin-1"), "latin-1"
    if declared is None and chosen == "utf-8":
        return text, None
    kind = "charset-fallback" if declared else "charset-guessed"
    return text, f"{kind}:{label}->{chosen}"


def clean_text(text: str) -> str:
    """Drop NUL characters and lone surrogates, which PostgreSQL text columns cannot store."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii() and _SURROGATE.search(text):  # a scan, not a copy of a 50 MB body
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def decode_base64(data: bytes) -> tuple[bytes, str | None]:
    """Lenient base64: ignore junk and line breaks, repair padding."""
    defect = "base64-invalid-characters" if _B64_BAD.search(data) else None
    clean = data.translate(None, _B64_JUNK)
    rem = len(clean) % 4
    if rem == 1:
        clean, defect = clean[:-1], "base64-invalid-length"
    elif rem:
        clean += b"=" * (4 - rem)
    try:
        return binascii.a2b_base64(clean), defect
    except (binascii.Error, ValueError):  # pragma: no cover - cleaned input always decodes
        return b"", "base64-undecodable"


def decode_transfer(data: bytes, cte: str) -> tuple[bytes, str | None]:
    """Undo a Content-Transfer-Encoding; unknown encodings pass through with a defect."""
    cte = cte.strip().strip("\"'").lower()
    if cte == "base64":
        return decode_base64(data)
    if cte == "quoted-printable":
        return binascii.a2b_qp(data), None
    if cte in ("", "7bit", "8bit", "binary"):
        return data, None
    return data, f"transfer-encoding-unknown:{_label(cte)}"


def decode_header_bytes(raw: bytes) -> tuple[str, list[str]]:
    """Decode a raw header value: 8-bit bytes first (utf-8, then guesses), then RFC 2047 words."""
    defects: list[str] = []
    text, defect = decode_text(raw, None)
    if defect:
        defects.append("header-8bit:" + defect)
    text, more = decode_words(text)
    return clean_text(text), defects + more


def decode_words(value: str) -> tuple[str, list[str]]:
    """Decode RFC 2047 encoded-words, joining adjacent words (even split multi-byte chars)."""
    if "=?" not in value:
        return value, []
    out: list[str] = []
    defects: list[str] = []
    pending = bytearray()
    pending_cs: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending_cs
        if pending_cs is not None:
            text, defect = decode_text(bytes(pending), pending_cs)
            out.append(text)
            if defect:
                defects.append("encoded-word:" + defect)
        pending.clear()
        pending_cs = None

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        if gap and not (pending_cs is not None and gap.isspace()):
            flush()
            out.append(gap)
        charset = m.group(1).split("*", 1)[0].lower()
        payload = m.group(3).encode("ascii", "replace")
        if m.group(2) in "bB":
            chunk, defect = decode_base64(payload)
            if defect:
                defects.append("encoded-word:" + defect)
        else:
            chunk = binascii.a2b_qp(payload, header=True)
        if pending_cs is not None and pending_cs != charset:
            flush()
        pending_cs = charset
        pending += chunk
        pos = m.end()
    flush()
    out.append(value[pos:])
    return "".join(out), defects
