"""The grammar real servers use, against Dovecot and, where Dovecot cannot show it, a
scripted server: literal8 and fetch(binary=True) (RFC 3516), ID (RFC 2971), COMPRESS=DEFLATE
(RFC 4978), and non-ASCII search terms sent as literals (RFC 3501 section 4.3, RFC 7888).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from harness import DovecotServer, ProxyFactory, make_message
from harness.configs import DEFAULTS, FAST_RETRY, config
from harness.scripted import CAPS, ScriptConn, ScriptedIMAP

from guardedpool import GuardedPool
from guardedpool.errors import IMAPCommandError, OperationTimeout, ProtocolError
from guardedpool.imap import IMAPAccount, IMAPConnector, parse_fetch, parse_search
from guardedpool.sockets import identify, is_open

T = 1.0
CFG = config(DEFAULTS, connect_timeout=3.0, op_timeout=T, close_timeout=T)
PAYLOAD = b"hello\x00world!"


def account(
    server: DovecotServer, user: tuple[str, str], port: int | None = None, **kw: object
) -> IMAPAccount:
    name, password = user
    return IMAPAccount(
        host="127.0.0.1",
        port=port or server.port,
        username=name,
        password=password,
        tls=False,
        **kw,  # type: ignore[arg-type]
    )


def mime_with_binary_part(subject: str = "binary") -> bytes:
    encoded = base64.b64encode(PAYLOAD).decode()
    return (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="bb"\r\n\r\n'
        "--bb\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "--bb\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--bb--\r\n"
    ).encode()


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# -- literal8 and BINARY ---------------------------------------------------------------------


async def test_fetch_binary_returns_decoded_octets_as_literal8(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    dovecot.seed_messages(fresh_user[0], messages=[mime_with_binary_part()])
    connector = IMAPConnector({"k": account(dovecot, fresh_user)})
    client = await connector.open("k", CFG)
    try:
        await client.select()
        response = await client.uid_fetch(
            "1:*", "(UID BODY.PEEK[2] BODY.PEEK[HEADER])", binary=True
        )
        # Dovecot sends a part holding NUL as a literal8 (~{n}).
        assert any(line.endswith(b"~{%d}" % len(PAYLOAD)) for line in response.lines)
        (item,) = parse_fetch(response.lines)
        assert item.sections["BINARY[2]"] == PAYLOAD
        assert b"Subject: binary" in (item.sections["BODY[HEADER]"] or b"")
        plain = parse_fetch((await client.fetch("1", "(BODY.PEEK[2])")).lines)[0]
        assert plain.sections["BODY[2]"] == base64.b64encode(PAYLOAD)  # still encoded
    finally:
        await connector.close(client, T)


async def test_fetch_binary_refused_without_the_capability() -> None:
    async def script(conn: ScriptConn) -> None:
        await conn.greet()
        await conn.serve()

    async with ScriptedIMAP(script) as srv:
        acc = IMAPAccount(host="127.0.0.1", port=srv.port, username="u", password="p", tls=False)
        connector = IMAPConnector({"k": acc})
        client = await connector.open("k", CFG)
        await client.select()
        with pytest.raises(IMAPCommandError) as err:
            await client.fetch("1", "(BODY.PEEK[1])", binary=True)
        assert "BINARY" in str(err.value) and not client.poisoned
        await connector.close(client, T)
    assert not any(b"FETCH" in line for line in srv.received)


# -- ID ---------------------------------------------------------------------------------------


async def test_client_id_is_sent_after_login(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    acc = account(dovecot, fresh_user, client_id={"name": "guardedpool-test", "version": "9.9"})
    connector = IMAPConnector({"k": acc})
    client = await connector.open("k", CFG)
    await client.select()
    await connector.close(client, T)
    deadline = time.monotonic() + 3
    while "name=guardedpool-test" not in dovecot.log_tail(200):
        assert time.monotonic() < deadline, dovecot.log_tail(20)
        await asyncio.sleep(0.05)
    assert f"imap({fresh_user[0]})" in dovecot.log_tail(200)


# -- non-ASCII search terms as literals ----------------------------------------------------------


async def test_non_ascii_search_against_dovecot(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    dovecot.seed_messages(
        fresh_user[0],
        messages=[
            make_message(1, subject="=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?="),
            make_message(2, subject="Greetings from Bonn"),
        ],
    )
    connector = IMAPConnector({"k": account(dovecot, fresh_user)})
    client = await connector.open("k", CFG)
    try:
        await client.select()
        assert "LITERAL+" in client.capabilities  # so this is the non-synchronising form
        assert parse_search((await client.search("SUBJECT", "Köln", charset="UTF-8")).lines) == [1]
        assert parse_search((await client.uid_search('SUBJECT "Grüße"')).lines) == [1]
        assert parse_search((await client.search("SUBJECT", "Bonn")).lines) == [2]
    finally:
        await connector.close(client, T)


async def test_uid_search_through_uid_sends_non_ascii_as_a_literal(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    """``uid("SEARCH", ...)`` is ``uid_search``: never raw 8-bit (Dovecot: BAD "8bit data
    in atom"), with or without a CHARSET the caller wrote; terms with spaces are quoted."""
    dovecot.seed_messages(
        fresh_user[0],
        messages=[
            make_message(1, subject="=?UTF-8?Q?New_York_K=C3=B6ln?="),
            make_message(2, subject="Greetings from Bonn"),
        ],
    )
    connector = IMAPConnector({"k": account(dovecot, fresh_user)})
    client = await connector.open("k", CFG)
    try:
        await client.select()
        for args in (
            ("SUBJECT", "Köln"),
            ("CHARSET", "UTF-8", "SUBJECT", "Köln"),
            ("SUBJECT", '"York Köln"'),
        ):
            assert parse_search((await client.uid("SEARCH", *args)).lines) == [1], args
        assert parse_search((await client.uid("SEARCH", "SUBJECT", "Bonn")).lines) == [2]
    finally:
        await connector.close(client, T)


async def test_synchronising_literal_waits_for_continuation() -> None:
    async def script(conn: ScriptConn) -> None:
        await conn.greet("IMAP4rev1")
        line = await conn.serve(until=b"SEARCH", caps="IMAP4rev1")
        tag = line.split(b" ", 1)[0]
        assert line.endswith(b"SEARCH CHARSET UTF-8 SUBJECT {5}\r\n"), line
        await conn.send(b"+ Ready for literal data\r\n")
        rest = await conn.line()
        assert rest == "Köln\r\n".encode(), rest
        await conn.send(b"* SEARCH 3\r\n" + tag + b" OK done\r\n")
        await conn.serve(caps="IMAP4rev1")

    async with ScriptedIMAP(script) as srv:
        acc = IMAPAccount(host="127.0.0.1", port=srv.port, username="u", password="p", tls=False)
        connector = IMAPConnector({"k": acc})
        client = await connector.open("k", CFG)
        await client.select()
        response = await client.search("SUBJECT", "Köln", charset="UTF-8")
        assert parse_search(response.lines) == [3]
        await client.noop()  # the connection is still in step
        await connector.close(client, T)
    assert not any("Köln".encode() in line and b"SEARCH" in line for line in srv.received)


async def test_missing_continuation_is_bounded_by_op_timeout() -> None:
    async def script(conn: ScriptConn) -> None:
        await conn.greet("IMAP4rev1")
        await conn.serve(until=b"SEARCH", caps="IMAP4rev1")
        await conn.drain()  # never sends '+'

    async with ScriptedIMAP(script) as srv:
        acc = IMAPAccount(host="127.0.0.1", port=srv.port, username="u", password="p", tls=False)
        client = await IMAPConnector({"k": acc}).open("k", CFG)
        await client.select()
        identity = identify(client.socket)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(OperationTimeout):
            await client.search("SUBJECT", "Köln", timeout=0.3)
        assert time.monotonic() - started < 0.3 + 1.0
        assert client.poisoned
        await settle()
        assert not is_open(identity)


# -- COMPRESS=DEFLATE -------------------------------------------------------------------------


async def test_compress_login_select_fetch_idle_same_socket(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    dovecot.seed_messages(fresh_user[0], 3)
    connector = IMAPConnector({"k": account(dovecot, fresh_user, compress=True)})
    client = await connector.open("k", CFG)
    identity = identify(client.socket)  # type: ignore[arg-type]
    try:
        assert client.compressed
        await client.select()
        items = parse_fetch((await client.uid_fetch("1:*", "(UID FLAGS BODY.PEEK[])")).lines)
        assert [i.uid for i in items] == [1, 2, 3] and all(i.body for i in items)
        await client.idle_start()
        dovecot.seed_messages(fresh_user[0], 1)
        pushed: list[bytes] = []
        deadline = time.monotonic() + 5
        while not any(b"EXISTS" in line for line in pushed) and time.monotonic() < deadline:
            pushed += await client.wait_server_push(timeout=1.0)
        await client.idle_done()
        assert any(b"4 EXISTS" in line for line in pushed + client.pending_pushes())
        assert identify(client.socket) == identity  # type: ignore[arg-type]
    finally:
        await connector.close(client, T)
    await settle()
    assert not is_open(identity)


async def test_compress_shrinks_the_wire_and_keeps_bounds(
    dovecot: DovecotServer, fresh_user: tuple[str, str], fault_proxy: ProxyFactory
) -> None:
    dovecot.seed_messages(fresh_user[0], 30)
    down: dict[bool, int] = {}
    for compress in (False, True):
        proxy = await fault_proxy()
        connector = IMAPConnector(
            {"k": account(dovecot, fresh_user, proxy.port, compress=compress)}
        )
        client = await connector.open("k", CFG)
        await client.select()
        before = proxy.stats().bytes_down
        items = parse_fetch((await client.uid_fetch("1:*", "(UID BODY.PEEK[])")).lines)
        assert len(items) == 30
        down[compress] = proxy.stats().bytes_down - before
        if compress:
            # Bounds unchanged: a stalled compressed command still ends within op_timeout.
            proxy.stall_all()
            started = time.monotonic()
            with pytest.raises(OperationTimeout):
                await client.noop(timeout=0.3)
            assert time.monotonic() - started < 0.3 + 1.0 and client.poisoned
            await connector.close(client, T)
        else:
            await connector.close(client, T)
    assert down[True] < down[False] / 2, down


async def test_pool_with_compress_audits_clean(
    dovecot: DovecotServer, fresh_user: tuple[str, str]
) -> None:
    pool = GuardedPool(IMAPConnector({"k": account(dovecot, fresh_user, compress=True)}), CFG)
    async with pool:
        async with pool.acquire("k") as conn:
            await conn.select()
            assert conn.compressed
        report = await pool.audit()
        assert report.healthy, str(report)


async def test_compress_refused_stays_uncompressed() -> None:
    caps = "IMAP4rev1 COMPRESS=DEFLATE"

    async def script(conn: ScriptConn) -> None:
        await conn.greet(caps)
        line = await conn.serve(until=b"COMPRESS", caps=caps)
        await conn.send(line.split(b" ", 1)[0] + b" NO [COMPRESSIONACTIVE] already\r\n")
        await conn.serve(caps=caps)

    async with ScriptedIMAP(script) as srv:
        acc = IMAPAccount(
            host="127.0.0.1", port=srv.port, username="u", password="p", tls=False, compress=True
        )
        connector = IMAPConnector({"k": acc})
        client = await connector.open("k", CFG)
        assert not client.compressed
        await client.noop()
        await connector.close(client, T)


# -- IDLE ended by the server in the same write as its '+' ----------------------------------


async def test_idle_ended_with_its_continuation_reconnects_the_session() -> None:
    """A server may answer IDLE with '+', a push and the tagged OK in one write (a restart,
    say). The session must not die of it (it did, with RuntimeError); only the client's
    DONE ends IDLE (RFC 3501 section 6.3.10), so the connection is poisoned and the session
    reconnects and says so (CONNECTED, resumed)."""
    from guardedpool.imap.idle import idle

    idles = 0

    async def script(conn: ScriptConn) -> None:
        nonlocal idles
        await conn.greet()
        line = await conn.serve(until=b"IDLE")
        if b"LOGOUT" in line.upper():
            return
        idles += 1
        tag = line.split(b" ")[0]
        if idles == 1:
            await conn.send(b"+ idling\r\n* 4 EXISTS\r\n" + tag + b" OK IDLE terminated\r\n")
            return
        await conn.send(b"+ idling\r\n")
        await conn.line()  # DONE
        await conn.send(tag + b" OK IDLE done\r\n")
        await conn.serve()

    async with ScriptedIMAP(script) as srv:
        acct = IMAPAccount(
            host="127.0.0.1", port=srv.port, username="u", password="p", tls=False
        )
        pool = GuardedPool(IMAPConnector({"k": acct}), config(CFG, retry=config(FAST_RETRY)))
        async with pool, idle(pool, "k", renew_after=5.0) as pushes:
            events = aiter(pushes)
            seen = []
            for _ in range(5):  # bounded: CONNECTED, maybe EXISTS, CONNECTED (resumed)
                event = await asyncio.wait_for(anext(events), 10)
                seen.append((event.kind, event.resumed))
                if event.resumed:
                    break
        assert seen[0] == ("CONNECTED", False)
        assert seen[-1] == ("CONNECTED", True), seen
        assert idles == 2


# -- IDLE pushes: shared waits, and pushes that come with the end of IDLE ---------------------


async def _idling_client(script: Any) -> tuple[ScriptedIMAP, IMAPConnector, Any]:
    srv = ScriptedIMAP(script)
    await srv.__aenter__()
    acc = IMAPAccount(host="127.0.0.1", port=srv.port, username="u", password="p", tls=False)
    connector = IMAPConnector({"k": acc})
    client = await connector.open("k", CFG)
    await client.select()
    await client.idle_start()
    return srv, connector, client


async def test_two_push_waiters_on_one_connection_each_get_a_batch_in_order() -> None:
    """Two tasks waiting for pushes at once: the first gets the first batch and the second
    the next, each as it comes (not after its timeout, as when the second waiter's future
    replaced the first's)."""

    async def script(conn: ScriptConn) -> None:
        await conn.greet()
        tag = (await conn.serve(until=b"IDLE")).split(b" ")[0]
        await conn.send(b"+ idling\r\n")
        await asyncio.sleep(0.1)
        await conn.send(b"* 5 EXISTS\r\n")
        await asyncio.sleep(0.1)
        await conn.send(b"* 6 EXISTS\r\n")
        await conn.line()  # DONE
        await conn.send(tag + b" OK IDLE done\r\n")
        await conn.serve()

    srv, connector, client = await _idling_client(script)
    try:
        first = asyncio.ensure_future(client.wait_server_push(timeout=30))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(client.wait_server_push(timeout=30))
        got = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert got == [[b"5 EXISTS"], [b"6 EXISTS"]]
        await client.idle_done()
        assert not client.poisoned
        await connector.close(client, T)
    finally:
        await srv.__aexit__(None, None, None)


async def test_pushes_sent_with_the_servers_end_of_idle_are_handed_over_first() -> None:
    """A server that ends IDLE itself (RFC 3501 section 6.3.10 says only DONE should) may
    send its last pushes in the same write as the tagged OK: they are returned before the
    end of IDLE is reported (they were dropped)."""

    async def script(conn: ScriptConn) -> None:
        await conn.greet()
        tag = (await conn.serve(until=b"IDLE")).split(b" ")[0]
        await conn.send(b"+ idling\r\n")
        await asyncio.sleep(0.1)
        await conn.send(b"* 9 EXISTS\r\n" + tag + b" OK IDLE over, server timeout\r\n")
        await conn.drain()

    srv, _, client = await _idling_client(script)
    try:
        assert await client.wait_server_push(timeout=10) == [b"9 EXISTS"]
        with pytest.raises(ProtocolError, match="without DONE"):
            await client.wait_server_push(timeout=10)
        assert client.poisoned
    finally:
        client.abort()
        await srv.__aexit__(None, None, None)


async def test_a_mailbox_name_that_cannot_be_encoded_is_a_usage_error_and_the_pool_goes_on() -> (
    None
):
    """A name with a lone surrogate (a WireName passes it through) cannot be sent: that is
    the caller's error (UnicodeEncodeError, a ValueError), nothing is written and nothing
    stays pending, so the same connection serves the next borrower (it answered every later
    command with "BAD ... another command pending" until a health check gave up on it)."""
    from guardedpool.imap import WireName

    async def script(conn: ScriptConn) -> None:
        await conn.greet()
        await conn.serve()

    async with ScriptedIMAP(script) as srv:
        acct = IMAPAccount(
            host="127.0.0.1", port=srv.port, username="u", password="p", tls=False
        )
        pool = GuardedPool(IMAPConnector({"k": acct}), config(CFG, max_per_key=1))
        async with pool:
            with pytest.raises(UnicodeEncodeError):
                async with pool.acquire("k") as client:
                    await client.select(WireName("Entw\udcfcrfe"))
            async with pool.acquire("k") as client:
                assert not client.poisoned
                await client.select("INBOX")
            assert pool.stats()["total"]["opened"] == 1
    assert not any(b"Entw" in line for line in srv.received)


async def test_tagged_statuses_in_lower_case_complete_their_commands() -> None:
    """RFC 3501 section 9: OK, NO and BAD are case-insensitive. A server answering "a1 ok"
    must complete the command (it waited until op_timeout and poisoned the connection)."""

    async def script(conn: ScriptConn) -> None:
        await conn.greet()
        for _ in range(10):  # bounded: LOGIN, NOOP, SELECT, IDLE (+ DONE), EXAMINE, LOGOUT
            line = await conn.line()
            tag, _, rest = line.partition(b" ")
            verb = rest.split(b" ", 1)[0].strip().upper()
            if verb == b"LOGIN":
                await conn.send(tag + f" ok [CAPABILITY {CAPS}] logged in\r\n".encode())
            elif verb == b"IDLE":
                await conn.send(b"+ idling\r\n")
                await conn.line()  # DONE
                await conn.send(tag + b" ok idle done\r\n")
            elif verb == b"EXAMINE":
                await conn.send(tag + b" no [NONEXISTENT] no such mailbox\r\n")
            elif verb == b"LOGOUT":
                await conn.send(b"* BYE bye\r\n" + tag + b" ok bye\r\n")
                return
            else:
                await conn.send(b"* 1 EXISTS\r\n" + tag + b" ok done\r\n")

    async with ScriptedIMAP(script) as srv:
        acc = IMAPAccount(host="127.0.0.1", port=srv.port, username="u", password="p", tls=False)
        connector = IMAPConnector({"k": acc})
        client = await connector.open("k", CFG)
        assert (await client.noop()).result == "OK"
        assert (await client.select("INBOX")).result == "OK"
        await client.idle_start()
        assert (await client.idle_done()).result == "OK"
        with pytest.raises(IMAPCommandError, match="NO"):
            await client.examine("Nope")
        assert not client.poisoned
        await connector.close(client, T)
