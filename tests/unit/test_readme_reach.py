"""The README's "Reaching real providers" examples are valid Python and use real names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import guardedpool
import guardedpool.imap

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("### Reaching real providers")
    return text[start : text.index("\n## ", start)]


def test_examples_parse_and_import_what_exists() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) >= 4
    for block in blocks:
        tree = ast.parse(block.replace("async with pool", "with pool"))  # top-level snippet
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in (
                "guardedpool",
                "guardedpool.imap",
            ):
                module = guardedpool if node.module == "guardedpool" else guardedpool.imap
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_every_new_account_option_is_documented() -> None:
    section = _section()
    for option in ("starttls", "token_provider", "client_id", "compress", "binary=True"):
        assert f"`{option}" in section or option in section, option
