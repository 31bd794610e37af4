"""Folder roles across languages and Gmail, per-account uniqueness, and rename detection."""

from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailish.domain.folders import (
    _NAMES,
    FolderDiff,
    FolderRole,
    FolderSnapshot,
    ListedFolder,
    ObservedFolder,
    assign_roles,
    detect_role,
    diff_folders,
    parent_path,
    snapshot_folders,
    split_path,
)
from mailish.domain.utf7 import encode_mailbox_name

R = FolderRole


def lf(path: str, *attributes: str, delimiter: str | None = "/") -> ListedFolder:
    return ListedFolder(encode_mailbox_name(path), path, delimiter, frozenset(attributes))


def obs(
    path: str, uidvalidity: int | None, *attributes: str, delimiter: str = "/"
) -> ObservedFolder:
    return ObservedFolder(lf(path, *attributes, delimiter=delimiter), uidvalidity)


def test_roles_are_exactly_special_use_plus_gmail() -> None:
    assert [role.value for role in FolderRole] == [
        *("inbox", "sent", "drafts", "trash", "junk", "archive", "all", "flagged", "important"),
    ]


NAMED = {
    R.SENT: "Sent|Sent Items|Sent Messages|Sent Mail|Отправленные|Gesendet|Gesendete Elemente|"
    "Éléments envoyés|Envoyés|Enviados|Elementos enviados|Posta inviata|Inviati|Itens Enviados|"
    "Verzonden|Wysłane|Gönderilmiş|Gönderilmiş Öğeler|已发送|寄件備份|送信済み|送信済みアイテム|"
    "Надіслані|Відправлені",
    R.DRAFTS: "Drafts|Черновики|Entwürfe|Brouillons|Borradores|Bozze|Rascunhos|Concepten|"
    "Robocze|Wersje robocze|Taslaklar|草稿箱|草稿|下書き|Чернетки",
    R.TRASH: "Trash|Deleted|Deleted Items|Deleted Messages|Bin|Корзина|Удалённые|Удаленные|"
    "Papierkorb|Gelöscht|Gelöschte Elemente|Corbeille|Éléments supprimés|Papelera|Cestino|"
    "Lixeira|Itens Excluídos|Prullenbak|Verwijderde items|Kosz|Çöp Kutusu|已删除|已删除邮件|"
    "ゴミ箱|削除済みアイテム|Кошик|Видалені",
    R.JUNK: "Junk|Junk E-mail|Junk Email|Spam|Bulk Mail|Спам|Нежелательная почта|Spamverdacht|"
    "Junk-E-Mail|Courrier indésirable|Indésirables|Correo no deseado|Posta indesiderata|"
    "Lixo Eletrônico|Ongewenste e-mail|Wiadomości-śmieci|Gereksiz|İstenmeyen|垃圾邮件|垃圾箱|"
    "迷惑メール|Небажана пошта",
    R.ARCHIVE: "Archive|Archives|Архив|Archiv|Archivo|Archivio|Arquivo|Archief|Archiwum|Arşiv|"
    "存档|アーカイブ|Архів",
    R.ALL: "All Mail",
}
NAMED_CASES = [(name, role) for role, names in NAMED.items() for name in names.split("|")]


@pytest.mark.parametrize(("name", "role"), NAMED_CASES)
def test_localised_names_at_top_level_and_under_inbox(name: str, role: FolderRole) -> None:
    assert detect_role(lf(name)) is role
    assert detect_role(lf(f"INBOX/{name}")) is role
    assert detect_role(lf(f"INBOX.{name}", delimiter=".")) is role
    assert detect_role(lf(f"Inbox.{name}", delimiter=".")) is role


def test_name_table_has_no_cross_role_collisions() -> None:
    for role, names in _NAMES.items():
        for name in names:
            assert detect_role(lf(name)) is role, name


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("SENT ITEMS", R.SENT),
        ("sent  items", R.SENT),  # whitespace collapses
        (" Drafts ", R.DRAFTS),
        ("ОТПРАВЛЕННЫЕ", R.SENT),
        ("УДАЛЁННЫЕ", R.TRASH),
        ("удаленные", R.TRASH),
        (unicodedata.normalize("NFD", "Удалённые"), R.TRASH),
        (unicodedata.normalize("NFD", "Entwürfe"), R.DRAFTS),
        ("ENTWÜRFE", R.DRAFTS),
        (unicodedata.normalize("NFD", "ÉLÉMENTS ENVOYÉS"), R.SENT),
        ("istenmeyen", R.JUNK),  # Turkish İ folds to i + U+0307; users type plain i
        ("GÖNDERİLMİŞ", R.SENT),
        ("gelÖscht", R.TRASH),
    ],
)
def test_names_compare_after_nfc_casefold_and_yo(name: str, role: FolderRole) -> None:
    assert detect_role(lf(name)) is role


@pytest.mark.parametrize(
    ("path", "delimiter"),
    [
        ("Sent Stuff", "/"),
        ("My Sent", "/"),
        ("Sentx", "/"),
        ("Work/Sent", "/"),  # deeper than top level or INBOX's children: the user's own folder
        ("INBOX/Work/Sent", "/"),
        ("INBOX.Archive.2023", "."),
        ("Sent/Trash", "/"),
        ("Important", "/"),  # Gmail-only names count only inside [Gmail]/
        ("Starred", "/"),
        ("Work", "/"),
        ("INBOX/Sent", "."),  # "/" is not this server's delimiter, so this is one top-level name
    ],
)
def test_names_elsewhere_have_no_role(path: str, delimiter: str) -> None:
    assert detect_role(lf(path, delimiter=delimiter)) is None


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("[Gmail]/All Mail", R.ALL),
        ("[Gmail]/Sent Mail", R.SENT),
        ("[Gmail]/Drafts", R.DRAFTS),
        ("[Gmail]/Trash", R.TRASH),
        ("[Google Mail]/Bin", R.TRASH),
        ("[Gmail]/Spam", R.JUNK),
        ("[Gmail]/Starred", R.FLAGGED),
        ("[Gmail]/Important", R.IMPORTANT),
        ("[Google Mail]/Gesendet", R.SENT),  # Gmail localises names to the account language
        ("[Gmail]/Корзина", R.TRASH),
        ("[Gmail]/Chats", None),
        ("[Gmail]/Sent Mail/Old", None),
        ("Labels/[Gmail]/Spam", None),
    ],
)
def test_gmail_children(path: str, role: FolderRole | None) -> None:
    assert detect_role(lf(path)) is role


@pytest.mark.parametrize(
    ("attributes", "role"),
    [
        ({"\\Sent"}, R.SENT),
        ({"\\Drafts"}, R.DRAFTS),
        ({"\\Trash"}, R.TRASH),
        ({"\\Junk"}, R.JUNK),
        ({"\\Archive"}, R.ARCHIVE),
        ({"\\All"}, R.ALL),
        ({"\\Flagged"}, R.FLAGGED),
        ({"\\Important"}, R.IMPORTANT),
        ({"\\HasNoChildren", "\\JUNK"}, R.JUNK),
        ({"\\Spam"}, R.JUNK),  # XLIST spellings
        ({"\\AllMail"}, R.ALL),
        ({"\\Starred"}, R.FLAGGED),
        ({"\\All", "\\Archive"}, R.ARCHIVE),  # several flags: enum order decides
        ({"\\HasChildren"}, None),
        ({"\\Sent", "\\Noselect"}, None),
        ({"\\Inbox"}, None),
    ],
)
def test_special_use_attributes(attributes: set[str], role: FolderRole | None) -> None:
    assert detect_role(lf("Folder", *attributes)) is role


def test_special_use_beats_the_name() -> None:
    assert detect_role(lf("Trash", "\\Junk")) is R.JUNK
    assert detect_role(lf("Sent Items", "\\Drafts")) is R.DRAFTS
    assert detect_role(lf("[Gmail]/Spam", "\\Trash")) is R.TRASH


@pytest.mark.parametrize(
    ("folder", "role"),
    [
        (lf("INBOX"), R.INBOX),
        (lf("inbox"), R.INBOX),
        (lf("InBoX", "\\Trash"), R.INBOX),  # the inbox is always the inbox
        (lf("Work/INBOX"), None),
        (lf("INBOX/INBOX"), None),
        (lf("\u0131nbox"), None),  # dotless ı upper-cases to I, but is not INBOX
        (lf("Sent", "\\Noselect"), None),
        (lf("Sent", "\\NonExistent"), None),
        (lf("[Gmail]", "\\Noselect", "\\HasChildren"), None),
        (lf("[Gmail]/Sent Mail", "\\NonExistent"), None),
    ],
)
def test_inbox_and_unselectable_folders(folder: ListedFolder, role: FolderRole | None) -> None:
    assert detect_role(folder) is role


def test_listed_folder_properties() -> None:
    folder = ListedFolder.from_wire("Work/&BB4EQgRHBFEEQgRL-", "/", ["\\HasNoChildren"])
    assert folder.path == "Work/Отчёты"
    assert folder.components == ("Work", "Отчёты")
    assert folder.name == "Отчёты"
    assert folder.parent_path == "Work"
    assert folder.attributes == frozenset({"\\hasnochildren"})
    assert folder.selectable
    assert not lf("X", "\\NoSelect").selectable
    flat = ListedFolder.from_wire("a/b", None, [])
    assert (flat.name, flat.parent_path, flat.components) == ("a/b", None, ("a/b",))
    assert ListedFolder.from_wire("Отправленные", "/", []).path == "Отправленные"  # lenient
    assert ListedFolder.from_wire("&BB4-", "", []).delimiter is None
    assert ListedFolder.from_wire("A&B", "/", [], utf8=True).path == "A&B"
    assert ListedFolder.from_wire("A&-B", "/", []).path == "A&B"
    assert lf("x", "\\Sent") == ListedFolder("x", "x", "/", frozenset({"\\sent"}))


@pytest.mark.parametrize(
    ("path", "delimiter", "parts", "parent"),
    [
        ("a/b/c", "/", ("a", "b", "c"), "a/b"),
        ("a", "/", ("a",), None),
        ("INBOX.Sent", ".", ("INBOX", "Sent"), "INBOX"),
        ("a/b", None, ("a/b",), None),
        ("a/b", "", ("a/b",), None),
        ("/a", "/", ("", "a"), None),  # an empty head names no folder
        ("~peter/mail/台北", "/", ("~peter", "mail", "台北"), "~peter/mail"),
    ],
)
def test_hierarchy_helpers(
    path: str, delimiter: str | None, parts: tuple[str, ...], parent: str | None
) -> None:
    assert split_path(path, delimiter) == parts
    assert parent_path(path, delimiter) == parent


DOVECOT = [
    lf("INBOX", "\\HasChildren"),
    lf("Sent", "\\Sent"),
    lf("Drafts", "\\Drafts"),
    lf("Trash", "\\Trash"),
    lf("Junk", "\\Junk"),
    lf("Archive", "\\Archive"),
    lf("Work"),
    lf("Work/Sent"),
]
GMAIL = [
    lf("INBOX", "\\HasNoChildren"),
    lf("[Gmail]", "\\Noselect", "\\HasChildren"),
    lf("[Gmail]/All Mail", "\\All"),
    lf("[Gmail]/Drafts", "\\Drafts"),
    lf("[Gmail]/Important", "\\Important"),
    lf("[Gmail]/Sent Mail", "\\Sent"),
    lf("[Gmail]/Spam", "\\Junk"),
    lf("[Gmail]/Starred", "\\Flagged"),
    lf("[Gmail]/Trash", "\\Trash"),
    lf("Sent"),  # a user label: loses to the flagged folder
    lf("Trash"),
]
COURIER = [
    lf("INBOX", delimiter="."),
    lf("INBOX.Sent", delimiter="."),
    lf("INBOX.Drafts", delimiter="."),
    lf("INBOX.Trash", delimiter="."),
    lf("INBOX.spam", delimiter="."),
    lf("INBOX.Old.Sent", delimiter="."),
]
OUTLOOK_RU = [
    ListedFolder.from_wire(encode_mailbox_name(name), "/", ["\\HasNoChildren"])
    for name in ("INBOX", "Отправленные", "Удаленные", "Нежелательная почта", "Черновики", "Архив")
]


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        (
            DOVECOT,
            {"Archive": R.ARCHIVE, "Drafts": R.DRAFTS, "INBOX": R.INBOX, "Junk": R.JUNK}
            | {"Sent": R.SENT, "Trash": R.TRASH},
        ),
        (
            GMAIL,
            {"INBOX": R.INBOX, "[Gmail]/All Mail": R.ALL, "[Gmail]/Drafts": R.DRAFTS}
            | {"[Gmail]/Important": R.IMPORTANT, "[Gmail]/Sent Mail": R.SENT}
            | {"[Gmail]/Spam": R.JUNK, "[Gmail]/Starred": R.FLAGGED, "[Gmail]/Trash": R.TRASH},
        ),
        (
            COURIER,
            {"INBOX": R.INBOX, "INBOX.Drafts": R.DRAFTS, "INBOX.Sent": R.SENT}
            | {"INBOX.Trash": R.TRASH, "INBOX.spam": R.JUNK},
        ),
        (
            OUTLOOK_RU,
            {"INBOX": R.INBOX, "Архив": R.ARCHIVE, "Нежелательная почта": R.JUNK}
            | {"Отправленные": R.SENT, "Удаленные": R.TRASH, "Черновики": R.DRAFTS},
        ),
        # SPECIAL-USE beats a better-looking name.
        ([lf("Sent"), lf("Sent Items", "\\Sent")], {"Sent Items": R.SENT}),
        # Same evidence: shallower, then shorter, then smaller path wins.
        ([lf("INBOX.Sent", delimiter="."), lf("Sent", delimiter=".")], {"Sent": R.SENT}),
        ([lf("Sent Messages"), lf("Sent")], {"Sent": R.SENT}),
        ([lf("Spam"), lf("Junk")], {"Junk": R.JUNK}),
        ([lf("Sent Messages", "\\Sent"), lf("Sent", "\\Sent")], {"Sent": R.SENT}),
        # [Gmail]/ names outrank the generic table.
        ([lf("Trash"), lf("[Gmail]/Trash")], {"[Gmail]/Trash": R.TRASH}),
        ([lf("Inbox"), lf("INBOX")], {"INBOX": R.INBOX}),
        ([lf("INBOX", "\\Junk"), lf("Spam")], {"INBOX": R.INBOX, "Spam": R.JUNK}),
        ([lf("Sent", "\\Noselect"), lf("Sent Items")], {"Sent Items": R.SENT}),
        ([], {}),
    ],
)
def test_assign_roles(folders: list[ListedFolder], expected: dict[str, FolderRole]) -> None:
    assert assign_roles(folders) == expected
    assert list(assign_roles(folders)) == sorted(expected)


POOL = [
    *DOVECOT,
    *GMAIL,
    *COURIER,
    *OUTLOOK_RU,
    lf("Sent", "\\Drafts"),  # duplicate path, different attributes
    lf("inbox"),
    lf("Sent Items", "\\Sent"),
    lf("Deleted Items"),
    lf("INBOX/Spam"),
    lf("Корзина", "\\Noselect"),
]


@given(
    st.lists(st.sampled_from(POOL), max_size=20).flatmap(
        lambda folders: st.tuples(st.just(folders), st.permutations(folders))
    )
)
def test_assign_roles_is_order_independent_and_unique(
    pair: tuple[list[ListedFolder], list[ListedFolder]],
) -> None:
    folders, shuffled = pair
    roles = assign_roles(folders)
    assert roles == assign_roles(shuffled)
    assert list(roles.items()) == list(assign_roles(shuffled).items())
    assert len(set(roles.values())) == len(roles)
    for path, role in roles.items():
        candidates = [folder for folder in folders if folder.path == path]
        assert any(detect_role(folder) is role for folder in candidates)
        assert role is R.INBOX or any(folder.selectable for folder in candidates)
    inboxes = [f.path for f in folders if f.path.isascii() and f.path.lower() == "inbox"]
    if inboxes:
        assert roles[min(inboxes)] is R.INBOX


def test_snapshot_folders_records_uidvalidity_and_role() -> None:
    observed = [obs("Sent", 7, "\\Sent"), obs("INBOX", 1), obs("Work", None, "\\Noselect")]
    assert snapshot_folders(observed) == {
        "INBOX": FolderSnapshot("INBOX", 1, R.INBOX),
        "Sent": FolderSnapshot("Sent", 7, R.SENT),
        "Work": FolderSnapshot("Work", None, None),
    }


def snap(path: str, uidvalidity: int | None, role: FolderRole | None = None) -> FolderSnapshot:
    return FolderSnapshot(path, uidvalidity, role)


def old_map(*snaps: FolderSnapshot) -> dict[str, FolderSnapshot]:
    return {item.path: item for item in snaps}


DIFFS = {
    "nothing changed": (
        [snap("INBOX", 1), snap("Work", 5)],
        [obs("INBOX", 1), obs("Work", 5)],
        FolderDiff(created=[], deleted=[], renamed=[], unchanged=["INBOX", "Work"]),
    ),
    "created and deleted": (
        [snap("INBOX", 1), snap("Old", 5)],
        [obs("INBOX", 1), obs("New", 6)],
        FolderDiff(created=["New"], deleted=["Old"], renamed=[], unchanged=["INBOX"]),
    ),
    "rename keeps uidvalidity": (
        [snap("INBOX", 1), snap("Work", 5)],
        [obs("INBOX", 1), obs("Jobs", 5)],
        FolderDiff(created=[], deleted=[], renamed=[("Work", "Jobs")], unchanged=["INBOX"]),
    ),
    "parent and children renamed": (
        [snap("P", 10), snap("P/A", 11), snap("P/A/Deep", 12), snap("P/B", 13)],
        [obs("Q", 10), obs("Q/A", 11), obs("Q/A/Deep", 12), obs("Q/B", 13)],
        FolderDiff(
            created=[],
            deleted=[],
            renamed=[("P", "Q"), ("P/A", "Q/A"), ("P/A/Deep", "Q/A/Deep"), ("P/B", "Q/B")],
            unchanged=[],
        ),
    ),
    "children without uidvalidity follow the parent": (
        [snap("P", 10), snap("P/A", None), snap("P/A/B", None)],
        [obs("Q", 10), obs("Q/A", None, "\\Noselect"), obs("Q/A/B", None)],
        FolderDiff([], [], [("P", "Q"), ("P/A", "Q/A"), ("P/A/B", "Q/A/B")], []),
    ),
    "noselect parent follows its child": (
        [snap("P", None), snap("P/A", 11), snap("P/B", None)],
        [obs("Q", None, "\\Noselect"), obs("Q/A", 11), obs("Q/B", None)],
        FolderDiff([], [], [("P", "Q"), ("P/A", "Q/A"), ("P/B", "Q/B")], []),
    ),
    "moved into another parent that still exists": (
        [snap("Work", 1), snap("Work/A", 5), snap("Home", 2)],
        [obs("Work", 1), obs("Home", 2), obs("Home/A", 5)],
        FolderDiff([], [], [("Work/A", "Home/A")], ["Home", "Work"]),
    ),
    "a child follows its nearest renamed ancestor": (
        [snap("P", 1), snap("P/A", 2), snap("P/A/x", None), snap("P/y", None), snap("R", 3)],
        [obs("Q", 1), obs("R", 3), obs("R/A", 2), obs("R/A/x", None), obs("Q/y", None)],
        FolderDiff([], [], [("P", "Q"), ("P/A", "R/A"), ("P/A/x", "R/A/x"), ("P/y", "Q/y")], ["R"]),
    ),
    "child with a new uidvalidity is a new folder": (
        [snap("P", 10), snap("P/A", 11)],
        [obs("Q", 10), obs("Q/A", 99)],
        FolderDiff(["Q/A"], ["P/A"], [("P", "Q")], []),
    ),
    "uidvalidity changed at the same path": (
        [snap("INBOX", 1), snap("Trash", 5)],
        [obs("INBOX", 1), obs("Trash", 6)],
        FolderDiff(created=["Trash"], deleted=["Trash"], renamed=[], unchanged=["INBOX"]),
    ),
    "renamed away and the old path recreated": (
        [snap("Work", 5)],
        [obs("Work", 9), obs("Jobs", 5)],
        FolderDiff(created=["Work"], deleted=[], renamed=[("Work", "Jobs")], unchanged=[]),
    ),
    "swap": (
        [snap("A", 1), snap("B", 2)],
        [obs("A", 2), obs("B", 1)],
        FolderDiff([], [], [("A", "B"), ("B", "A")], []),
    ),
    "shared uidvalidity resolved by role": (
        [snap("Sent", 7, R.SENT), snap("Old", 7)],
        [obs("Sent Items", 7, "\\Sent"), obs("Older", 7)],
        FolderDiff([], [], [("Old", "Older"), ("Sent", "Sent Items")], []),
    ),
    "shared uidvalidity resolved by last name": (
        [snap("A/Reports", 7), snap("B/Invoices", 7), snap("A", 1), snap("B", 2)],
        [obs("C/Reports", 7), obs("C/Invoices", 7), obs("A", 1), obs("B", 2), obs("C", 3)],
        FolderDiff(
            ["C"], [], [("A/Reports", "C/Reports"), ("B/Invoices", "C/Invoices")], ["A", "B"]
        ),
    ),
    "shared uidvalidity with no evidence stays unmatched": (
        [snap("X", 7), snap("Y", 7)],
        [obs("P", 7), obs("Q", 7)],
        FolderDiff(created=["P", "Q"], deleted=["X", "Y"], renamed=[], unchanged=[]),
    ),
    "unknown uidvalidity is no evidence of a rename": (
        [snap("X", None)],
        [obs("Y", None)],
        FolderDiff(created=["Y"], deleted=["X"], renamed=[], unchanged=[]),
    ),
    "unknown uidvalidity at the same path is unchanged": (
        [snap("X", None), snap("Y", 3)],
        [obs("X", 4), obs("Y", None, "\\Noselect")],
        FolderDiff(created=[], deleted=[], renamed=[], unchanged=["X", "Y"]),
    ),
    "dot delimiter": (
        [snap("INBOX", 1), snap("INBOX.Work", 5), snap("INBOX.Work.A", 6)],
        [
            obs(p, uv, delimiter=".")
            for p, uv in [("INBOX", 1), ("INBOX.Jobs", 5), ("INBOX.Jobs.A", None)]
        ],
        FolderDiff(
            [], [], [("INBOX.Work", "INBOX.Jobs"), ("INBOX.Work.A", "INBOX.Jobs.A")], ["INBOX"]
        ),
    ),
}


@pytest.mark.parametrize(("old", "new", "expected"), DIFFS.values(), ids=list(DIFFS))
def test_diff_folders(
    old: list[FolderSnapshot], new: list[ObservedFolder], expected: FolderDiff
) -> None:
    assert diff_folders(old_map(*old), new) == expected
    assert diff_folders(old_map(*reversed(old)), list(reversed(new))) == expected


PATHS = ["INBOX", "A", "A/x", "A/x/y", "A/z", "B", "B/x", "B/z", "C", "C/x", "Sent", "Trash"]
uidvalidities = st.none() | st.integers(1, 4)
roles = st.none() | st.sampled_from(FolderRole)


@st.composite
def snapshots_and_listings(
    draw: st.DrawFn,
) -> tuple[dict[str, FolderSnapshot], list[ObservedFolder]]:
    old_entries = draw(st.dictionaries(st.sampled_from(PATHS), st.tuples(uidvalidities, roles)))
    new_entries = draw(st.dictionaries(st.sampled_from(PATHS), uidvalidities))
    old = {path: FolderSnapshot(path, uv, role) for path, (uv, role) in old_entries.items()}
    return old, [obs(path, uv) for path, uv in new_entries.items()]


@given(snapshots_and_listings(), st.randoms(use_true_random=False))
def test_diff_partitions_both_sides_and_ignores_order(
    case: tuple[dict[str, FolderSnapshot], list[ObservedFolder]], rng: random.Random
) -> None:
    old, new = case
    diff = diff_folders(old, new)
    sources = [source for source, _ in diff.renamed]
    targets = [target for _, target in diff.renamed]
    assert sorted(diff.deleted + sources + diff.unchanged) == sorted(old)
    assert sorted(diff.created + targets + diff.unchanged) == sorted(o.folder.path for o in new)
    for values in (diff.created, diff.deleted, diff.renamed, diff.unchanged):
        assert values == sorted(values)
    uv_new = {o.folder.path: o.uidvalidity for o in new}
    for source, target in diff.renamed:
        assert source != target
        assert None in (old[source].uidvalidity, uv_new[target]) or (
            old[source].uidvalidity == uv_new[target]
        )
    shuffled_new = list(new)
    rng.shuffle(shuffled_new)
    shuffled_old_items = list(old.items())
    rng.shuffle(shuffled_old_items)
    assert diff_folders(dict(shuffled_old_items), shuffled_new) == diff


def test_large_tree_rename_is_linear_enough() -> None:
    count = 3000
    old = {"P": snap("P", 1)} | {f"P/{i}": snap(f"P/{i}", None) for i in range(count)}
    old |= {f"K/{i}": snap(f"K/{i}", 10 + i) for i in range(count)}
    new = [obs("Q", 1), *(obs(f"Q/{i}", None) for i in range(count))]
    new += [obs(f"L/{i}", 10 + i) for i in range(count)]
    diff = diff_folders(old, new)
    assert len(diff.renamed) == 2 * count + 1
    assert (diff.created, diff.deleted, diff.unchanged) == ([], [], [])
