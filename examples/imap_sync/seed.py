"""Demo mail: small, varied RFC 822 messages, and the server-side changes a resync must see.

Everything here goes through the pool like any other client would, so the demo's
"connections opened" numbers include seeding, and the changes (append, flag, expunge)
reach the worker exactly as another mail client's would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from guardedpool import GuardedPool
from guardedpool.imap import IMAPClient, parse_search

__all__ = ["append_messages", "expunge_first", "flag_first", "make_message"]

_SUBJECTS = (
    "Quarterly numbers",
    "Lunch on Thursday?",
    "Re: the pool leak",
    "Build failed on main",
    "Your invoice",
    "Photos from the trip",
    "Meeting notes",
    "Password reset (not really)",
)


def make_message(owner: str, index: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"sender{index % 3}@example.test"
    msg["To"] = f"{owner}@example.test"
    msg["Subject"] = f"{_SUBJECTS[index % len(_SUBJECTS)]} #{index}"
    msg["Date"] = format_datetime(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=index))
    msg["Message-ID"] = make_msgid(domain="example.test")
    msg.set_content(f"Hello {owner},\n\n" + f"line {index} of the demo corpus.\n" * (1 + index % 7))
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def append_messages(
    pool: GuardedPool[IMAPClient], key: str, start: int, count: int, mailbox: str = "INBOX"
) -> None:
    async with pool.acquire(key) as imap:
        for i in range(start, start + count):
            await imap.append(make_message(key, i), mailbox, flags="\\Seen" if i % 3 else None)


async def flag_first(pool: GuardedPool[IMAPClient], key: str, flag: str = "\\Flagged") -> None:
    async with pool.acquire(key) as imap:
        await imap.select("INBOX")
        uids = parse_search((await imap.uid_search("ALL")).lines)
        await imap.uid("STORE", str(uids[0]), "+FLAGS.SILENT", f"({flag})")


async def expunge_first(pool: GuardedPool[IMAPClient], key: str, count: int) -> None:
    async with pool.acquire(key) as imap:
        await imap.select("INBOX")
        uids = parse_search((await imap.uid_search("ALL")).lines)[:count]
        await imap.uid("STORE", ",".join(map(str, uids)), "+FLAGS.SILENT", "(\\Deleted)")
        await imap.expunge()
