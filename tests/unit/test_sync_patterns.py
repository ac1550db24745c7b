"""Patterns -> mailboxes, and which stored folders went away: the pure part of folders.py."""

from __future__ import annotations

import pytest

from examples.imap_sync.folders import (
    Folder,
    compile_patterns,
    pair_renames,
    parse_pattern,
    select_folders,
    unmatched,
    unselectable,
    vanished,
)
from guardedpool.imap import WireName, parse_list

LIST = parse_list(
    [
        b'(\\HasNoChildren) "/" INBOX',
        b'(\\HasChildren) "/" INBOX/Sub',
        b'(\\HasNoChildren) "/" "Entw&APw-rfe"',
        b'(\\Noselect \\HasChildren) "/" Archive',
        b'(\\HasNoChildren) "/" Archive/2024',
        b'(\\HasNoChildren) "/" Archive/2024/Q1',
        b'(\\HasNoChildren \\Junk) "/" Spam',
        b'(\\HasNoChildren \\Trash) "/" "Deleted Items"',
        b'(\\NonExistent) "/" Ghost',
        b'(\\HasNoChildren) "/" "Rock &- Roll"',
        b"List completed.",
    ]
)


def names(*patterns: str) -> list[str]:
    return [f.name for f in select_folders(LIST, compile_patterns(patterns))]


def test_patterns() -> None:
    assert names("*") == [
        "INBOX",
        "INBOX/Sub",
        "Entw&APw-rfe",
        "Archive/2024",
        "Archive/2024/Q1",
        "Spam",
        "Deleted Items",
        "Rock &- Roll",
    ]  # \Noselect Archive and \NonExistent Ghost never
    assert names("inbox", "Archive/*") == ["INBOX", "Archive/2024", "Archive/2024/Q1"]
    assert names("%") == ["INBOX", "Entw&APw-rfe", "Spam", "Deleted Items", "Rock &- Roll"]
    assert names("Archive/%") == ["Archive/2024"]
    assert names("Entwürfe", "Rock & Roll") == ["Entw&APw-rfe", "Rock &- Roll"]
    assert names("Entw&APw-rfe") == []  # a wire name is not a human name
    assert names("*", "!\\Junk", "!\\trash", "!INBOX/*") == [
        "INBOX",
        "Entw&APw-rfe",
        "Archive/2024",
        "Archive/2024/Q1",
        "Rock &- Roll",
    ]
    assert names("!Archive/*", "!%/*") == names("%")  # starts from "*"
    assert names("\\Junk") == ["Spam"]
    assert names("*", "!Archive/*", "Archive/2024/Q1") == [  # the last match decides
        n for n in names("*") if n != "Archive/2024"
    ]
    assert all(isinstance(n, WireName) for n in names("*"))


def test_the_server_delimiter_works_too() -> None:
    dotted = parse_list([b'() "." Archive.2024', b'() "." Other', b"ok"])
    assert [f.name for f in select_folders(dotted, compile_patterns(["Archive/*"]))] == [
        "Archive.2024"
    ]
    assert [f.name for f in select_folders(dotted, compile_patterns(["Archive.*"]))] == [
        "Archive.2024"
    ]
    assert Folder.from_entry(dotted[0]).path == "Archive/2024"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "must be"), ("!", "followed"), ("\\Spam", "not a SPECIAL-USE role"), ("a\tb", "control")],
)
def test_bad_patterns(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_pattern(text)


def test_unmatched_names_and_vanished_folders() -> None:
    patterns = compile_patterns(["INBOX", "Entw&APw-rfe", "Typo", "Archive/*", "\\Sent"])
    assert unmatched(patterns, LIST) == ["Entw&APw-rfe", "Typo"]
    # A \Noselect parent is there (skipped, never SELECTed); a \NonExistent one is not.
    named = compile_patterns(["Archive", "Ghost"])
    assert unmatched(named, LIST) == ["Ghost"]
    assert unselectable(named, LIST) == ["Archive"]
    known = ["INBOX", "Archive/2023", "Archive/2024", "Elsewhere"]
    listed = {e.name for e in LIST if e.selectable}
    # Elsewhere is no longer wanted by the patterns: narrowing the config retires nothing.
    assert vanished(known, listed, patterns, "/") == ["Archive/2023"]


def test_pair_renames() -> None:
    assert pair_renames({"Old": 7, "Gone": 8}, {"New": 7, "Other": 9}) == {"Old": "New"}
    # Two new mailboxes with the old UIDVALIDITY: no guess.
    assert pair_renames({"Old": 7}, {"A": 7, "B": 7}) == {}
    assert pair_renames({"A": 7, "B": 7}, {"New": 7}) == {}
    assert pair_renames({"Never": None}, {"New": 7}) == {}
