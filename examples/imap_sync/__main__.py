"""The command line: ``python -m examples.imap_sync {run,demo}``.

Exit codes: 0 success; 1 a sync or the demo went wrong (details printed); 2 the
configuration (or the store path it names) is unusable -- one line on stderr naming the
file, the key and the problem, and nothing touched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config
from .store import UnusableStore

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.imap_sync",
        description="Mirror IMAP inboxes into SQLite through a guarded connection pool.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="sync the accounts of a config file")
    run.add_argument("--config", required=True, metavar="FILE", help="the sync.toml to use")
    run.add_argument("--once", action="store_true", help="one pass, then exit (default: poll)")
    run.add_argument("-v", "--verbose", action="store_true", help="log guardedpool at INFO")
    sub.add_parser("demo", help="the self-contained demo on an embedded pymap server")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo  # pymap is only needed here

        return asyncio.run(run_demo())
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from .progress import make_console
    from .runner import run_sync

    try:
        return asyncio.run(run_sync(config, once=args.once, console=make_console()))
    except ConfigError as exc:  # a setting found unusable at start (the health port)
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UnusableStore as exc:  # raised before the pool starts: nothing was touched
        print(f"store error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except sqlite3.Error as exc:
        print(f"store error: {config.store_path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
