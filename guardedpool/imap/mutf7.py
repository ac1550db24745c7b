"""Mailbox names: modified UTF-7 (RFC 3501 §5.1.3), and names sent exactly as given.

Pure functions, no I/O. IMAP4rev1 puts international mailbox names on the wire in
*modified UTF-7*: printable US-ASCII (0x20-0x7E) stands for itself except ``&``, which is
written ``&-``; any other run of characters is ``&``, the modified BASE64 of its UTF-16BE
form (``,`` instead of ``/``, no ``=`` padding), then ``-``. So the folder a user knows as
``Entwürfe`` is ``Entw&APw-rfe`` on the wire.

A human name and a wire name cannot be told apart by looking (``&`` is legal in both:
``A&B`` the human name is ``A&-B`` on the wire), so the client takes human names and a
:class:`WireName` when the caller already has the wire form, e.g. from a LIST response.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["WireName", "decode", "display", "encode"]


class WireName(str):
    """A mailbox name exactly as it goes on the wire (modified UTF-7, or UTF-8 where the
    session enabled ``UTF8=ACCEPT``): every :class:`~guardedpool.imap.IMAPClient` command
    sends it unchanged, only quoted when it needs to be. A plain ``str`` is a human name
    and is encoded. :func:`~guardedpool.imap.parse.parse_list` returns names of this type,
    so a listed name passes straight back to SELECT.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"WireName({str.__repr__(self)})"


# Printable US-ASCII (RFC 3501 §5.1.3): these stand for themselves, '&' excepted.
_DIRECT = re.compile(r"[\x20-\x25\x27-\x7e]+")
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def encode(name: str) -> str:
    """``name`` (a human name, any Unicode) in modified UTF-7, e.g. ``Entwürfe`` ->
    ``Entw&APw-rfe``, ``A&B`` -> ``A&-B``.

    Raises ValueError for a string with a lone surrogate (no UTF-16 form exists).
    """
    out: list[str] = []
    pos = 0
    while pos < len(name):
        direct = _DIRECT.match(name, pos)
        if direct is not None:
            out.append(direct.group())
            pos = direct.end()
            continue
        if name[pos] == "&":
            out.append("&-")
            pos += 1
            continue
        end = pos
        while end < len(name) and name[end] != "&" and not _DIRECT.match(name[end]):
            end += 1
        try:
            utf16 = name[pos:end].encode("utf-16-be")
        except UnicodeEncodeError:
            raise ValueError(f"mailbox name {name!r} is not valid Unicode") from None
        b64 = base64.b64encode(utf16).rstrip(b"=").replace(b"/", b",")
        out.append("&" + b64.decode("ascii") + "-")
        pos = end
    return "".join(out)


def decode(wire: str) -> str:
    """A modified UTF-7 name back to the human one: ``Entw&APw-rfe`` -> ``Entwürfe``.

    Strict, as RFC 3501 §5.1.3 writes the rules: raises ValueError for a character outside
    printable US-ASCII, an ``&`` without its closing ``-``, a shifted run that is not
    modified BASE64 of whole UTF-16 units, or one that encodes printable US-ASCII (which
    must stand for itself), so that ``encode(decode(w)) == w`` for every ``w`` accepted.
    """
    out: list[str] = []
    pos = 0
    shifted_end = -1  # where the last non-empty shifted run ended
    while pos < len(wire):
        amp = wire.find("&", pos)
        plain = wire[pos:] if amp < 0 else wire[pos:amp]
        if plain and not _DIRECT.fullmatch(plain):
            raise ValueError(f"{wire!r} is not modified UTF-7: a character outside US-ASCII")
        out.append(plain)
        if amp < 0:
            break
        shifted = _SHIFTED.match(wire, amp)
        if shifted is None:
            raise ValueError(f"{wire!r} is not modified UTF-7: '&' at {amp} is not closed")
        b64 = shifted.group(1)
        if not b64:
            out.append("&")
        elif amp == shifted_end:
            # "&AOQ-&APY-": one run must cover both (RFC 3501 5.1.3), or encode() differs.
            raise ValueError(f"{wire!r} is not modified UTF-7: two shifted runs in a row")
        else:
            out.append(_unshift(wire, b64))
            shifted_end = shifted.end()
        pos = shifted.end()
    return "".join(out)


def _unshift(wire: str, b64: str) -> str:
    standard = b64.replace(",", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(b64) % 4), validate=True)
        text = raw.decode("utf-16-be")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(f"{wire!r} is not modified UTF-7: bad BASE64 run &{b64}-") from None
    # Leftover bits must be zero: otherwise two spellings would decode alike.
    if base64.b64encode(raw).rstrip(b"=").decode("ascii") != standard:
        raise ValueError(f"{wire!r} is not modified UTF-7: bad BASE64 run &{b64}-")
    if _DIRECT.search(text) or "&" in text:
        raise ValueError(f"{wire!r} is not modified UTF-7: &{b64}- encodes printable ASCII")
    return text


def display(wire: str) -> str:
    """The name to show a person (logs, metric labels): :func:`decode` of ``wire``, or
    ``wire`` itself when it is not valid modified UTF-7 (some servers send raw 8-bit
    names; showing them as sent beats failing)."""
    try:
        return decode(wire)
    except ValueError:
        return wire
