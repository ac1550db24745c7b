"""A deterministic mail corpus for ``sync.py``: realistic sizes, flags and MIME structure.

Same ``(seed, inboxes, messages)`` -> byte-identical files, on any machine. Sizes:

* ~97%: 2-50 KB (log-uniform), plain text or text + a small attachment;
* ~2.7%: 50-500 KB (log-uniform), text + a base64 attachment;
* ~0.3%: 1-5 MB (uniform), text + a base64 attachment.

Flags: ~70% \\Seen, ~10% \\Answered (seen ones), ~5% \\Flagged. Messages are RFC 822 with
CRLF line endings, the form an IMAP server stores and serves.

The corpus is written once under ``<workdir>/corpus-<seed>-<inboxes>x<messages>/`` with a
``manifest.json``; later runs reuse it. Loading into a Dovecot maildir is by hard link,
so it costs no copy.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her all she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three meeting invoice report project deadline schedule review budget quarter release "
    "server backup account password reset update agenda minutes draft contract customer "
    "shipping order payment receipt ticket issue patch build deploy migration database"
).split()

BASE_TIME = 1_700_000_000  # 2023-11-14: dates are deterministic, not "now"
LINE = 76


@dataclass(frozen=True, slots=True)
class Message:
    name: str  # file name inside the inbox's corpus dir
    size: int  # bytes, CRLF included
    flags: str  # maildir info letters, sorted: e.g. "FS", "RS", ""
    time: int  # delivery time, seconds since the epoch


def _text_blob(seed: int, size: int = 2 << 20) -> bytes:
    """2 MiB of wrapped prose; message bodies are slices of it (fast, deterministic)."""
    rng = random.Random(f"{seed}-blob")
    lines: list[str] = []
    total = 0
    while total < size:
        words: list[str] = []
        width = 0
        while width < rng.randint(50, LINE - 4):
            w = rng.choice(WORDS)
            words.append(w)
            width += len(w) + 1
        line = " ".join(words).capitalize() + ("." if rng.random() < 0.3 else "")
        if rng.random() < 0.08:
            line = ""  # paragraph break
        lines.append(line)
        total += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode()


def _size(rng: random.Random) -> tuple[int, str]:
    u = rng.random()
    if u < 0.003:
        return int(rng.uniform(1 << 20, 5 << 20)), "large"
    if u < 0.03:
        return int(math.exp(rng.uniform(math.log(50_000), math.log(500_000)))), "medium"
    return int(math.exp(rng.uniform(math.log(2_000), math.log(50_000)))), "small"


def _flags(rng: random.Random) -> str:
    flags = ""
    seen = rng.random() < 0.7
    if rng.random() < 0.05:
        flags += "F"
    if seen and rng.random() < 0.14:
        flags += "R"
    if seen:
        flags += "S"
    return flags


def _body_slice(blob: bytes, rng: random.Random, n: int) -> bytes:
    n = max(0, min(n, len(blob) - 1))
    start = rng.randrange(0, len(blob) - n)
    nl = blob.find(b"\r\n", start)
    start = nl + 2 if 0 <= nl < start + 200 else start
    out = blob[start : start + n]
    cut = out.rfind(b"\r\n")
    return out[: cut + 2] if cut > 0 else out + b"\r\n"


def _b64(data: bytes) -> bytes:
    raw = base64.b64encode(data)
    return b"\r\n".join(raw[i : i + LINE] for i in range(0, len(raw), LINE)) + b"\r\n"


def make_message(
    rng: random.Random, blob: bytes, account: str, index: int, target: int, kind: str, when: int
) -> bytes:
    """One message of about ``target`` bytes."""
    from email.utils import formatdate

    sender = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}@example.org"
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize()
    head = (
        f"Return-Path: <{sender}>\r\n"
        f"Received: from mx{rng.randint(1, 9)}.example.org "
        f"(mx.example.org [192.0.2.{rng.randint(1, 254)}])\r\n"
        f"\tby mail.example.net with ESMTPS id {rng.getrandbits(48):012x}\r\n"
        f"\tfor <{account}@example.net>; {formatdate(when)}\r\n"
        f"From: {sender}\r\n"
        f"To: {account}@example.net\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate(when)}\r\n"
        f"Message-ID: <{account}.{index}.{rng.getrandbits(32):08x}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    attach = 0
    if kind != "small":
        attach = target - 3000
    elif target > 20_000 and rng.random() < 0.25:
        attach = target // 2
    if not attach:
        text = _body_slice(blob, rng, target - len(head) - 60)
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
    boundary = f"=_b{rng.getrandbits(40):010x}"
    text = _body_slice(blob, rng, max(500, target - attach * 4 // 3 - len(head) - 400))
    name = f"{rng.choice(WORDS)}-{index}.{rng.choice(['pdf', 'zip', 'jpg', 'docx'])}"
    payload = _b64(rng.randbytes(max(1, attach * 3 // 4)))
    return b"".join(
        [
            head,
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode(),
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode(),
            text,
            f"--{boundary}\r\nContent-Type: application/octet-stream; name={name}\r\n"
            f"Content-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename={name}\r\n\r\n".encode(),
            payload,
            f"--{boundary}--\r\n".encode(),
        ]
    )


def accounts(inboxes: int) -> list[str]:
    return [f"u{i + 1:02d}" for i in range(inboxes)]


def password(account: str) -> str:
    return f"pw-{account}"


class Corpus:
    """The corpus on disk: ``root/<account>/<name>`` files + ``manifest.json``."""

    def __init__(self, workdir: Path, seed: int, inboxes: int, messages: int) -> None:
        self.seed = seed
        self.inboxes = inboxes
        self.messages = messages
        self.root = workdir / f"corpus-{seed}-{inboxes}x{messages}"
        self.manifest: dict[str, list[Message]] = {}

    @property
    def accounts(self) -> list[str]:
        return accounts(self.inboxes)

    def ensure(self) -> Corpus:
        mf = self.root / "manifest.json"
        if mf.exists():
            raw = json.loads(mf.read_text())
            self.manifest = {a: [Message(**m) for m in ms] for a, ms in raw.items()}
            return self
        tmp = self.root.with_name(self.root.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        blob = _text_blob(self.seed)
        for account in self.accounts:
            rng = random.Random(f"{self.seed}-{account}")
            (tmp / account).mkdir(exist_ok=True)
            msgs: list[Message] = []
            for i in range(self.messages):
                target, kind = _size(rng)
                flags = _flags(rng)
                when = BASE_TIME + i * 600 + rng.randrange(600)
                data = make_message(rng, blob, account, i + 1, target, kind, when)
                name = f"{i + 1:05d}"
                (tmp / account / name).write_bytes(data)
                msgs.append(Message(name, len(data), flags, when))
            self.manifest[account] = msgs
        (tmp / "manifest.json").write_text(
            json.dumps({a: [_as_dict(m) for m in ms] for a, ms in self.manifest.items()})
        )
        tmp.rename(self.root)
        return self

    def files(self, account: str) -> list[tuple[Path, Message]]:
        return [(self.root / account / m.name, m) for m in self.manifest[account]]

    @property
    def total_messages(self) -> int:
        return sum(len(ms) for ms in self.manifest.values())

    @property
    def total_bytes(self) -> int:
        return sum(m.size for ms in self.manifest.values() for m in ms)

    def summary(self) -> dict[str, Any]:
        sizes = sorted(m.size for ms in self.manifest.values() for m in ms)
        return {
            "seed": self.seed,
            "inboxes": self.inboxes,
            "messages_per_inbox": self.messages,
            "messages": len(sizes),
            "bytes": sum(sizes),
            "size_median": sizes[len(sizes) // 2],
            "size_p99": sizes[int(len(sizes) * 0.99)],
            "size_max": sizes[-1],
            "over_1mb": sum(1 for s in sizes if s >= 1 << 20),
        }


def _as_dict(m: Message) -> dict[str, Any]:
    return {"name": m.name, "size": m.size, "flags": m.flags, "time": m.time}


def load_into_maildir(corpus: Corpus, account: str, maildir: Path, uid: int, gid: int) -> int:
    """Hard-link an inbox's messages into ``maildir/cur`` (Dovecot must not be running).

    Names carry ``,S=<size>`` so Dovecot need not stat each file, and the flags after
    ``:2,``. The corpus files are chowned to Dovecot's mail user once (links share it).
    """
    cur = maildir / "cur"
    n = 0
    for path, msg in corpus.files(account):
        st = path.stat()
        if st.st_uid != uid:
            os.chown(path, uid, gid)
        name = f"{msg.time}.M{msg.name}P1.bench,S={msg.size},W={msg.size}:2,{msg.flags}"
        target = cur / name
        if not target.exists():
            os.link(path, target)
        os.utime(target, (msg.time, msg.time))
        n += 1
    return n
