"""Mailbox names on the wire against Dovecot: human names in, modified UTF-7 out."""

from __future__ import annotations

import pytest
from harness import DovecotServer, make_message
from harness.configs import DEFAULTS, config
from harness.scripted import ScriptConn, ScriptedIMAP

from guardedpool.errors import IMAPCommandError
from guardedpool.imap import (
    IMAPAccount,
    IMAPClient,
    IMAPConnector,
    WireName,
    parse_list,
    parse_status,
)

CFG = config(DEFAULTS, connect_timeout=2.0, op_timeout=2.0, close_timeout=2.0)


@pytest.fixture
async def client(fresh_user: tuple[str, str], dovecot: DovecotServer) -> IMAPClient:
    name, password = fresh_user
    account = IMAPAccount(
        host=dovecot.host, port=dovecot.port, username=name, password=password, tls=False
    )
    connector = IMAPConnector({"k": account})
    c = await connector.open("k", CFG)
    yield c  # type: ignore[misc]
    await connector.close(c, 2.0)


async def test_every_mailbox_command_takes_the_human_name(client: IMAPClient) -> None:
    await client.create("Entwürfe")
    listed = {e.human: e for e in parse_list((await client.list()).lines)}
    assert listed["Entwürfe"].name == "Entw&APw-rfe"  # what Dovecot stores and sends
    await client.append(make_message(1), "Entwürfe")
    assert parse_status((await client.status("Entwürfe")).lines)["MESSAGES"] == 1
    # The listed wire name goes back unchanged; the same text as a human name is another
    # mailbox ("Entw&-APw-rfe" on the wire), which does not exist.
    assert parse_status((await client.status(listed["Entwürfe"].name)).lines)["MESSAGES"] == 1
    with pytest.raises(IMAPCommandError):
        await client.status("Entw&APw-rfe")
    await client.create("Rock & Roll")
    await client.select("Entwürfe")
    assert client.selected == "Entwürfe"
    await client.copy("1", "Rock & Roll")
    await client.uid("COPY", "1", "Rock & Roll")
    await client.examine("Rock & Roll")
    await client.rename("Rock & Roll", "Blues & Jazz — 2024")
    names = {e.name: e.human for e in parse_list((await client.list("", "B*")).lines)}
    assert names == {"Blues &- Jazz &IBQ- 2024": "Blues & Jazz — 2024"}
    status = await client.command("STATUS", "Blues & Jazz — 2024", "(MESSAGES)")
    assert parse_status(status.lines)["MESSAGES"] == 2
    await client.delete("Blues & Jazz — 2024")
    await client.delete(WireName("Entw&APw-rfe"))
    assert [e.name for e in parse_list((await client.list()).lines)] == ["INBOX"]


async def test_list_reports_roles_and_hierarchy(client: IMAPClient) -> None:
    for name in ("Junk", "Trash", "Archive.2024"):
        await client.create(name)
    entries = {e.human: e for e in parse_list((await client.list()).lines)}
    assert entries["Junk"].special_use == {"\\Junk"}
    assert entries["Trash"].special_use == {"\\Trash"}
    assert entries["Archive.2024"].delimiter == "."
    assert entries["Archive.2024"].selectable
    # Dovecot's Maildir++ names the parent without a folder of its own: not selectable.
    assert "Archive" not in entries or not entries["Archive"].selectable


async def test_utf8_accept_sends_names_as_utf8() -> None:
    """RFC 6855: once ENABLE UTF8=ACCEPT succeeded, names go as UTF-8 quoted strings.
    Dovecot 2.3 does not offer UTF8=ACCEPT, so a scripted server answers as one that does."""
    caps = "IMAP4rev1 ENABLE UTF8=ACCEPT"

    async def script(conn: ScriptConn) -> None:
        await conn.greet(caps)
        line = await conn.serve(until=b"ENABLE", caps=caps)
        tag = line.split(b" ", 1)[0]
        await conn.send(b"* ENABLED UTF8=ACCEPT\r\n" + tag + b" OK enabled\r\n")
        await conn.serve(caps=caps)

    async with ScriptedIMAP(script) as srv:
        account = IMAPAccount(host=srv.host, port=srv.port, username="u", password="p", tls=False)
        connector = IMAPConnector({"k": account})
        c = await connector.open("k", CFG)
        await c.status("Entwürfe", "(MESSAGES)")  # before ENABLE: modified UTF-7
        assert not c.utf8_enabled
        await c.enable("UTF8=ACCEPT")
        assert c.utf8_enabled
        await c.select("Entwürfe")
        await c.status(WireName("Entw&APw-rfe"), "(MESSAGES)")  # a wire name: as given
        await connector.close(c, 2.0)
    sent = [line for line in srv.received if b"STATUS" in line or b"SELECT" in line]
    assert [line.split(b" ", 1)[1] for line in sent] == [
        b"STATUS Entw&APw-rfe (MESSAGES)\r\n",
        b'SELECT "Entw\xc3\xbcrfe"\r\n',
        b"STATUS Entw&APw-rfe (MESSAGES)\r\n",
    ]
