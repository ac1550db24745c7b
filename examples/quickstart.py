"""The README's first example, runnable: ``python -m examples.quickstart``.

It starts an in-process IMAP server (pymap, plaintext on 127.0.0.1) so it needs nothing
installed beyond the ``example`` extra; against a real server you would build the accounts
with ``tls=True`` (the default) and your own ``ssl_context``.
"""

from __future__ import annotations

import asyncio

from guardedpool import GuardedPool, PoolConfig
from guardedpool.imap import IMAPAccount, IMAPConnector, parse_select

from .imap_sync.embedded import EmbeddedIMAPServer


async def main() -> None:
    async with EmbeddedIMAPServer() as server:
        await server.add_user("alice", "alice-pw")
        accounts = {
            "alice": IMAPAccount(
                host=server.host, port=server.port, username="alice", password="alice-pw", tls=False
            ),
        }
        pool = GuardedPool(IMAPConnector(accounts), PoolConfig(max_per_key=2, idle_timeout=300))
        async with pool:  # starts housekeeping; closes every connection on exit
            async with pool.acquire("alice") as imap:  # key = inbox id
                await imap.append(b"Subject: hello\r\n\r\nfirst message\r\n", mailbox="INBOX")
                info = parse_select((await imap.select("INBOX")).lines)
                print(f"INBOX: {info.exists} message(s), UIDVALIDITY {info.uidvalidity}")
            stats = pool.stats()["keys"]["alice"]
            print(
                f"pool: {stats['opened']} opened, {stats['idle']} idle, "
                f"{stats['acquires']} acquire(s)"
            )
            report = await pool.audit()
            print(report)


if __name__ == "__main__":
    asyncio.run(main())
