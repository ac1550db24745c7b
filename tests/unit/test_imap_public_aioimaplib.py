"""guardedpool uses only aioimaplib's public surface (house rule: no private attribute of a
dependency). Two checks that fail the moment someone reaches back in:

* none of our classes built on aioimaplib's overrides one of its private methods (their
  behaviour, and whether aioimaplib still calls them, can change in any release);
* no module of ours names one of aioimaplib's private attributes that we do not define
  ourselves (``obj._idle_event``, ``super()._handle_line(...)``).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import aioimaplib.aioimaplib as aioimaplib_module
import pytest

import guardedpool
from guardedpool.imap.protocol import GuardedProtocol

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(guardedpool.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _aioimaplib_privates() -> set[str]:
    """Every private name aioimaplib's classes define, and every ``self._x`` they assign."""
    names: set[str] = set()
    for _, cls in inspect.getmembers(aioimaplib_module, inspect.isclass):
        if cls.__module__ != aioimaplib_module.__name__:
            continue
        names |= {n for klass in cls.__mro__ for n in vars(klass) if _private(n)}
    tree = ast.parse(Path(aioimaplib_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            names.add(node.attr)
    return names


def _our_attribute_uses() -> dict[str, list[str]]:
    """Private attribute names our code reads or writes, with where; and those it defines."""
    uses: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                uses.setdefault(node.attr, []).append(where)
    return uses


def _our_definitions() -> set[str]:
    """Private names our own code defines: methods, and attributes assigned on self."""
    defined: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                defined.add(node.name)
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Attribute) and _private(sub.attr):
                        defined.add(sub.attr)
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        defined.add(stmt.target.id)
    return defined


def test_no_private_method_of_aioimaplib_is_overridden() -> None:
    ours = [
        cls for cls in (GuardedProtocol,) if issubclass(cls, aioimaplib_module.IMAP4ClientProtocol)
    ]
    overridden = {
        f"{cls.__name__}.{name}"
        for cls in ours
        for name in vars(cls)
        if _private(name)
        and any(
            name in vars(base)
            for base in cls.__mro__[1:]
            if base.__module__.startswith("aioimaplib")
        )
    }
    assert not overridden, f"overrides of aioimaplib's private methods: {sorted(overridden)}"


def test_no_private_attribute_of_aioimaplib_is_named() -> None:
    theirs = _aioimaplib_privates()
    assert {"_handle_line", "_idle_event", "_response_done"} <= theirs  # the scan works
    defined = _our_definitions()
    reached = {
        name: where
        for name, where in _our_attribute_uses().items()
        if name in theirs and name not in defined
    }
    assert not reached, f"aioimaplib private attributes used: {reached}"
