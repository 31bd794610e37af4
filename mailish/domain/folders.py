"""Folders as LIST reports them: roles (which folder is Sent, Trash, ...) and renames between LISTs.

Invariants:
- Pure and deterministic: results depend on the set of folders given, never on their order, and
  every list returned is sorted. Duplicate paths collapse to one folder chosen by a total order.
- A role names at most one folder per account, INBOX (case-insensitive, top level) is always
  the inbox, and only selectable folders get a role: the others cannot hold messages.
- The server's own word beats a guess: SPECIAL-USE attributes (RFC 6154, plus Gmail's XLIST
  spellings) outrank Gmail's ``[Gmail]/`` names, which outrank the localised name table. Names
  are trusted only at top level or directly under INBOX; deeper folders are the user's own.
- Folder identity across two LISTs is the path, or else UIDVALIDITY: servers keep it on RENAME
  and never reuse it for a new folder at the same time. A path whose UIDVALIDITY changed is a
  new folder, so it shows up in both ``deleted`` and ``created`` (apply deletions first).
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mailish.domain.utf7 import decode_mailbox_name_lenient


class FolderRole(enum.StrEnum):
    """Roles in priority order: a folder with several SPECIAL-USE flags takes the first."""

    INBOX = "inbox"
    SENT = "sent"
    DRAFTS = "drafts"
    TRASH = "trash"
    JUNK = "junk"
    ARCHIVE = "archive"
    ALL = "all"
    FLAGGED = "flagged"
    IMPORTANT = "important"


_R = FolderRole
_SPECIAL_USE: dict[str, FolderRole] = {
    **{f"\\{role.value}": role for role in FolderRole if role is not _R.INBOX},
    # Gmail's pre-RFC 6154 XLIST spellings, still sent by some proxies and old servers.
    "\\spam": _R.JUNK,
    "\\allmail": _R.ALL,
    "\\starred": _R.FLAGGED,
}
_UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})
_GMAIL_ROOTS = frozenset({"[gmail]", "[google mail]"})

# Names as shipped by servers, webmails and clients (Outlook, Thunderbird, Apple Mail, Dovecot,
# Gmail, Yandex, Mail.ru, GMX/Web.de, QQ/163 ...), ordered en ru de fr es it pt nl pl tr zh ja uk.
_NAMES: dict[FolderRole, tuple[str, ...]] = {
    _R.SENT: (
        *("Sent", "Sent Items", "Sent Messages", "Sent Mail", "Sent-Mail", "Отправленные"),
        *("Отправленные элементы", "Gesendet", "Gesendete Elemente", "Gesendete Objekte"),
        *("Envoyés", "Éléments envoyés", "Messages envoyés", "Enviados", "Elementos enviados"),
        *("Mensajes enviados", "Posta inviata", "Inviati", "Elementi inviati", "Itens Enviados"),
        *("Mensagens Enviadas", "Enviadas", "Verzonden", "Verzonden items", "Wysłane"),
        *("Elementy wysłane", "Gönderilmiş", "Gönderilmiş Öğeler", "Gönderilenler", "已发送"),
        *("已发送邮件", "已傳送", "寄件備份", "送信済み", "送信済みアイテム", "送信済みメール"),
        *("Надіслані", "Відправлені", "Надіслані елементи"),
    ),
    _R.DRAFTS: (
        *("Drafts", "Draft", "Черновики", "Entwürfe", "Brouillons", "Borradores", "Bozze"),
        *("Rascunhos", "Concepten", "Robocze", "Wersje robocze", "Taslaklar", "草稿箱", "草稿"),
        *("下書き", "Чернетки"),
    ),
    _R.TRASH: (
        *("Trash", "Deleted", "Deleted Items", "Deleted Messages", "Bin", "Корзина", "Удалённые"),
        *("Удалённые элементы", "Papierkorb", "Gelöscht", "Gelöschte Elemente", "Corbeille"),
        *("Gelöschte Objekte", "Éléments supprimés", "Papelera", "Elementos eliminados"),
        *("Eliminados", "Cestino", "Posta eliminata", "Elementi eliminati", "Lixeira", "Lixo"),
        *("Itens Excluídos", "Itens Eliminados", "Prullenbak", "Verwijderde items", "Kosz"),
        *("Elementy usunięte", "Çöp", "Çöp Kutusu", "Silinmiş Öğeler", "已删除", "已删除邮件"),
        *("已刪除", "已刪除郵件", "刪除的郵件", "ゴミ箱", "ごみ箱", "削除済みアイテム", "Кошик"),
        *("Видалені", "Видалені елементи"),
    ),
    _R.JUNK: (
        *("Junk", "Junk E-mail", "Junk Email", "Junk Mail", "Spam", "Bulk Mail", "Спам"),
        *("Нежелательная почта", "Junk-E-Mail", "Spamverdacht", "Unerwünscht", "Indésirables"),
        *("Courrier indésirable", "Pourriel", "Correo no deseado", "No deseado"),
        *("Posta indesiderata", "Lixo Eletrônico", "Lixo Electrónico", "Ongewenste e-mail"),
        *("Ongewenst", "Wiadomości-śmieci", "Gereksiz", "Gereksiz E-posta", "İstenmeyen"),
        *("垃圾邮件", "垃圾郵件", "垃圾箱", "迷惑メール", "Небажана пошта"),
    ),
    _R.ARCHIVE: (
        *("Archive", "Archives", "Архив", "Archiv", "Archivo", "Archivio", "Arquivo", "Archief"),
        *("Archiwum", "Arşiv", "归档", "存档", "封存", "アーカイブ", "Архів"),
    ),
    _R.ALL: ("All Mail",),
}


def _name_key(name: str) -> str:
    """Comparison form of a folder name: NFC, casefolded, ё as е, whitespace collapsed."""
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    # casefold() turns Turkish İ into i + U+0307; plain "i" is how the name is usually typed.
    return " ".join(folded.replace("ё", "е").replace("i\u0307", "i").split())


_ROLE_BY_NAME = {_name_key(name): role for role, names in _NAMES.items() for name in names}
# Inside [Gmail]/ these two are Gmail's own folders; elsewhere they are ordinary user names.
_GMAIL_NAMES = {**_ROLE_BY_NAME, "starred": _R.FLAGGED, "important": _R.IMPORTANT}


def split_path(path: str, delimiter: str | None) -> tuple[str, ...]:
    """Path components; a flat namespace (no delimiter) has a single component."""
    return tuple(path.split(delimiter)) if delimiter else (path,)


def parent_path(path: str, delimiter: str | None) -> str | None:
    """The parent folder's path, or None at top level (an empty head is not a folder)."""
    if not delimiter:
        return None
    head, sep, _ = path.rpartition(delimiter)
    return head if sep and head else None


@dataclass(frozen=True)
class ListedFolder:
    """One LIST response line: wire name, decoded path, delimiter and lowercased attributes."""

    raw_name: str
    path: str
    delimiter: str | None
    attributes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if any(flag != flag.lower() for flag in self.attributes):
            lowered = frozenset(flag.lower() for flag in self.attributes)
            object.__setattr__(self, "attributes", lowered)

    @classmethod
    def from_wire(
        cls, raw_name: str, delimiter: str | None, attributes: Iterable[str], *, utf8: bool = False
    ) -> ListedFolder:
        """Build from LIST fields; ``utf8`` when UTF8=ACCEPT is on and names are not UTF-7."""
        path = raw_name if utf8 else decode_mailbox_name_lenient(raw_name)
        return cls(raw_name, path, delimiter or None, frozenset(attributes))

    @property
    def components(self) -> tuple[str, ...]:
        return split_path(self.path, self.delimiter)

    @property
    def name(self) -> str:
        return self.components[-1]

    @property
    def parent_path(self) -> str | None:
        return parent_path(self.path, self.delimiter)

    @property
    def selectable(self) -> bool:
        return not self.attributes & _UNSELECTABLE


def _is_inbox(name: str) -> bool:
    return name.isascii() and name.lower() == "inbox"


def _classify(folder: ListedFolder) -> tuple[FolderRole, int] | None:
    """The folder's role and the rank of the evidence (lower is stronger)."""
    if _is_inbox(folder.path):
        return _R.INBOX, 0
    if not folder.selectable:
        return None
    declared = {_SPECIAL_USE[flag] for flag in folder.attributes if flag in _SPECIAL_USE}
    for role in FolderRole:
        if role in declared:
            return role, 1
    parts = folder.components
    guess: FolderRole | None = None
    if len(parts) == 2 and parts[0].casefold() in _GMAIL_ROOTS:
        guess, rank = _GMAIL_NAMES.get(_name_key(parts[1])), 2
    elif len(parts) == 1 or (len(parts) == 2 and _is_inbox(parts[0])):
        guess, rank = _ROLE_BY_NAME.get(_name_key(parts[-1])), 3
    return None if guess is None else (guess, rank)


def detect_role(folder: ListedFolder) -> FolderRole | None:
    """The role this folder would have on its own, before per-account uniqueness."""
    found = _classify(folder)
    return None if found is None else found[0]


def _order(folder: ListedFolder) -> tuple[str, str, str, list[str]]:
    return folder.path, folder.raw_name, folder.delimiter or "", sorted(folder.attributes)


def _unique(folders: Iterable[ListedFolder]) -> list[ListedFolder]:
    """One folder per path (a total order picks among duplicates), sorted by path."""
    chosen: dict[str, ListedFolder] = {}
    for folder in sorted(folders, key=_order):
        chosen.setdefault(folder.path, folder)
    return list(chosen.values())


def assign_roles(folders: Sequence[ListedFolder]) -> dict[str, FolderRole]:
    """Roles for one account's folders, keyed by path: each role on at most one folder.

    Stronger evidence wins; among equals the shallower, then shorter, then smaller path.
    """
    best: dict[FolderRole, tuple[int, int, int, str]] = {}
    for folder in _unique(folders):
        found = _classify(folder)
        if found is None:
            continue
        role, rank = found
        key = (rank, len(folder.components), len(folder.path), folder.path)
        if role not in best or key < best[role]:
            best[role] = key
    return {key[3]: role for role, key in sorted(best.items(), key=lambda item: item[1][3])}


@dataclass(frozen=True)
class FolderSnapshot:
    """What is remembered about a folder between two LISTs."""

    path: str
    uidvalidity: int | None
    role: FolderRole | None = None


@dataclass(frozen=True)
class ObservedFolder:
    """A listed folder with its UIDVALIDITY (None when unknown, e.g. for \\Noselect)."""

    folder: ListedFolder
    uidvalidity: int | None


@dataclass(frozen=True)
class FolderDiff:
    """Changes from an old snapshot to a new LIST; every list is sorted."""

    created: list[str]
    deleted: list[str]
    renamed: list[tuple[str, str]]  # (old_path, new_path); apply as one simultaneous mapping
    unchanged: list[str]


def snapshot_folders(observed: Sequence[ObservedFolder]) -> dict[str, FolderSnapshot]:
    """The snapshot to keep for the next ``diff_folders``, keyed by path in path order."""
    by_path = _observed_by_path(observed)
    roles = assign_roles([item.folder for item in by_path.values()])
    return {
        path: FolderSnapshot(path, item.uidvalidity, roles.get(path))
        for path, item in by_path.items()
    }


def _observed_by_path(observed: Iterable[ObservedFolder]) -> dict[str, ObservedFolder]:
    by_path: dict[str, ObservedFolder] = {}
    for item in sorted(observed, key=lambda o: (_order(o.folder), o.uidvalidity or -1)):
        by_path.setdefault(item.folder.path, item)
    return by_path


def _compatible(old: int | None, new: int | None) -> bool:
    return old is None or new is None or old == new


def diff_folders(old: Mapping[str, FolderSnapshot], new: Sequence[ObservedFolder]) -> FolderDiff:
    """Compare snapshots; ``old`` is keyed by path.

    A vanished path and a new one are a rename when their UIDVALIDITY is unique to the pair,
    when one is the other's parent or child counterpart under an already detected rename, or,
    among several with the same UIDVALIDITY, when role and last name single out one pair.
    """
    chosen = _observed_by_path(new)
    current = snapshot_folders(list(chosen.values()))
    same = {
        p for p in old if p in current and _compatible(old[p].uidvalidity, current[p].uidvalidity)
    }
    matcher = _RenameMatcher(
        {path: snap for path, snap in old.items() if path not in same},
        {path: snap for path, snap in current.items() if path not in same},
        {path: item.folder.delimiter for path, item in chosen.items()},
    )
    matcher.run()
    return FolderDiff(
        created=sorted(matcher.targets),
        deleted=sorted(matcher.sources),
        renamed=sorted(matcher.renames.items()),
        unchanged=sorted(same),
    )


@dataclass
class _RenameMatcher:
    """Pairs vanished (source) with appeared (target) paths; each pass only removes pairs."""

    sources: dict[str, FolderSnapshot]
    targets: dict[str, FolderSnapshot]
    delimiters: Mapping[str, str | None]
    renames: dict[str, str] = field(default_factory=dict)
    walked: set[str] = field(default_factory=set)  # renames already carried up to parents

    def run(self) -> None:
        while self._by_uidvalidity(scored=False) or self._by_prefix() or self._by_uidvalidity():
            pass

    def _accept(self, source: str, target: str) -> bool:
        if source not in self.sources or target not in self.targets:
            return False
        if not _compatible(self.sources[source].uidvalidity, self.targets[target].uidvalidity):
            return False
        del self.sources[source], self.targets[target]
        self.renames[source] = target
        return True

    def _by_uidvalidity(self, *, scored: bool = True) -> bool:
        groups: dict[int, tuple[list[str], list[str]]] = {}
        for side, snaps in enumerate((self.sources, self.targets)):
            for path, snap in snaps.items():
                if snap.uidvalidity is not None:
                    groups.setdefault(snap.uidvalidity, ([], []))[side].append(path)
        pairs: list[tuple[str, str]] = []
        for sources, targets in groups.values():
            if len(sources) == 1 and len(targets) == 1:
                pairs.append((sources[0], targets[0]))
            elif scored and sources and targets:
                pairs.extend(self._single_out(sources, targets))
        progress = False
        for source, target in sorted(pairs):
            progress |= self._accept(source, target)
        return progress

    def _single_out(self, sources: list[str], targets: list[str]) -> list[tuple[str, str]]:
        """Pairs that are each other's unique best match by role and last name."""
        scores = {(s, t): self._score(s, t) for s in sources for t in targets}

        def unique_best(candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
            top = max(scores[pair] for pair in candidates)
            best = [pair for pair in candidates if scores[pair] == top]
            return best[0] if top > 0 and len(best) == 1 else None

        by_source = {unique_best([(s, t) for t in targets]) for s in sources}
        by_target = {unique_best([(s, t) for s in sources]) for t in targets}
        return sorted(pair for pair in by_source & by_target if pair is not None)

    def _score(self, source: str, target: str) -> int:
        old_role, new_role = self.sources[source].role, self.targets[target].role
        delimiter = self.delimiters.get(target)
        same_name = split_path(source, delimiter)[-1] == split_path(target, delimiter)[-1]
        return 2 * (old_role is not None and old_role == new_role) + same_name

    def _by_prefix(self) -> bool:
        """Carry renames up to parents that vanished with them, and down to children.

        A child follows its nearest renamed ancestor, so a moved subfolder is not dragged back.
        """
        progress = False
        for old, new in sorted(self.renames.items()):
            delimiter = self.delimiters.get(new)
            if old in self.walked or not delimiter:
                continue
            self.walked.add(old)
            old_parts = list(split_path(old, delimiter))
            new_parts = list(split_path(new, delimiter))
            while len(old_parts) > 1 and len(new_parts) > 1 and old_parts[-1] == new_parts[-1]:
                old_parts.pop()
                new_parts.pop()
                progress |= self._accept(delimiter.join(old_parts), delimiter.join(new_parts))
        delimiters = sorted({d for d in self.delimiters.values() if d})
        for source in sorted(self.sources):
            for delimiter in delimiters:
                parts = source.split(delimiter)
                for depth in range(len(parts) - 1, 0, -1):
                    moved = self.renames.get(delimiter.join(parts[:depth]))
                    if moved is not None and self.delimiters.get(moved) == delimiter:
                        progress |= self._accept(source, delimiter.join([moved, *parts[depth:]]))
                        break
        return progress
