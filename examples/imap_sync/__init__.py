"""imap_sync: mirror many IMAP inboxes into SQLite through a guarded pool.

The modules, one concept each:

* ``config``    sync.toml -> :class:`~.config.SyncConfig` (validated, secrets resolved)
* ``store``     the SQLite mirror and its checkpoints (kill -9 safe)
* ``mailbox``   one sync pass of one mailbox over one IMAP connection
* ``uids``      UID sets and batching, pure
* ``worker``    many mailboxes at once, bounded; passes on a timer or on pushes; counters
* ``push``      idle mode: IDLE pushes trigger passes, the rest is polled
* ``runner``    ``run``: config -> pool, store, worker, health; once or until stopped
* ``progress``  what the terminal shows (rich)
* ``metrics``   pool stats + worker counters -> Prometheus
* ``health``    ``/healthz`` (an audit) and ``/metrics`` over aiohttp
* ``embedded``  an in-process pymap server for the demo
* ``leaky``     a deliberately buggy connector: the classic socket leak
* ``seed``      demo mail and server-side changes (append, flag, expunge)
* ``demo``      the README's one command
"""
