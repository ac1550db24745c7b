"""msgspec's validation errors, worded as the config's: ``accounts.alice.port: must be an
integer, got '993'``.

msgspec decides whether a value fits the declared shape and says where it failed (``$``
path in its message, documented); the wording here comes from the declared type of that
place (:func:`msgspec.inspect.type_info`) and the value found there, so a new option needs
no new message. Values shown are config values only: secret-bearing keys are refused
before validation (see config.py), and a value is cut to 60 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import UNSET
from msgspec import inspect as mi

__all__ = ["describe", "kind", "show", "toml_key"]

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_FIELD = re.compile(r"(missing required|unknown) field `([^`]+)`")
_VALID_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
# Options of guardedpool's config classes check their own values and name themselves:
# "PoolConfig.op_timeout must be > 0.0, got 0.0" is the key pool.op_timeout.
_POLICY = re.compile(r"^(PoolConfig|RetryPolicy|AuditPolicy)\.(\w+)\s*(.*)$", re.DOTALL)
_POLICY_NAME = re.compile(r"\b(PoolConfig|RetryPolicy|AuditPolicy)\.")
_POLICY_KEY = {"PoolConfig": "pool", "RetryPolicy": "pool.retry", "AuditPolicy": "pool.audit"}


def kind(value: object) -> str:
    """``"a table"``, ``"an array"``, ... for "must be a table, got an array"."""
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def show(value: object) -> str:
    """A value for an error message: short, and only ever a non-secret config value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def toml_key(parts: list[str | int], data: Mapping[str, Any]) -> str:
    """``accounts.alice.port`` once the account's key is valid, else ``accounts[0].port``;
    ``pool.retry.max_delay``."""
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, str):
            out = f"{out}.{part}" if out else part
            continue
        name = None
        if parts[:i] == ["accounts"] and parts[i + 1 : i + 2] != ["key"]:
            raw = _lookup(data, parts[: i + 1])
            key = raw.get("key") if isinstance(raw, dict) else None
            name = key if isinstance(key, str) and _VALID_KEY.fullmatch(key) else None
        out += f".{name}" if name else f"[{part}]"
    return out


def describe(
    exc: msgspec.ValidationError,
    shape: Any,
    data: Mapping[str, Any],
    *,
    prefix: tuple[str, ...] = (),
    phrases: Mapping[str, str] | None = None,
) -> str:
    """``"key: problem"`` for ``exc``, raised converting ``data`` (under the TOML keys
    ``prefix``) to ``shape``. ``phrases``: field name -> problem, where the type alone
    would word it badly (e.g. ``"accounts"``: "at least one [[accounts]] table ...")."""
    phrases = phrases or {}
    m = _AT.match(str(exc))
    assert m is not None  # the pattern matches any text
    msg, path = m.group("msg"), m.group("path") or ""
    policy = _POLICY.match(msg)
    if policy is not None:
        return _policy(policy)
    parts: list[str | int] = [n if n else int(i) for n, i in _PART.findall(path)]
    root = mi.type_info(shape)
    field = _FIELD.search(msg)
    if field is not None:
        table = _type_at(root, parts)
        parts.append(field.group(2))
        if field.group(1) == "unknown":
            names = table.fields if isinstance(table, mi.StructType | mi.DataclassType) else ()
            allowed = ", ".join(sorted(f.name for f in names))
            problem = f"unknown key (expected one of {allowed})"
        else:
            problem = phrases.get(field.group(2), "is required")
    else:
        name = parts[-1] if parts and isinstance(parts[-1], str) else ""
        value = _lookup(data, parts)
        if name in phrases:
            problem = phrases[name] + ("" if value is UNSET else f", got {show(value)}")
        else:
            problem = _problem(_type_at(root, parts), value, name)
    full: list[str | int] = [*prefix, *parts]
    nested = dict(data)
    for p in reversed(prefix):
        nested = {p: nested}
    return f"{toml_key(full, nested)}: {problem}"


def _policy(policy: re.Match[str]) -> str:
    key = f"{_POLICY_KEY[policy.group(1)]}.{policy.group(2)}"
    problem = _POLICY_NAME.sub(lambda m: _POLICY_KEY[m.group(1)] + ".", policy.group(3))
    value = re.match(r"^\((.*?)\)\s+(.*)$", problem, re.DOTALL)
    if value is not None:  # "(5) must be <= ..." -> "must be <= ..., got 5"
        problem = f"{value.group(2)}, got {value.group(1)}"
    return f"{key}: {problem.strip()}"


def _lookup(data: Any, parts: list[str | int]) -> Any:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return UNSET
    return data


def _type_at(info: mi.Type, parts: list[str | int]) -> mi.Type | None:
    for part in parts:
        info = _plain(info)
        if isinstance(part, int) and isinstance(info, mi.ListType):
            info = info.item_type
        elif isinstance(part, str) and isinstance(info, mi.StructType | mi.DataclassType):
            found = [f.type for f in info.fields if f.name == part]
            if not found:
                return None
            info = found[0]
        else:
            return None
    return _plain(info)


def _plain(info: mi.Type) -> mi.Type:
    """The type under any metadata (an unset option is already absent from the info)."""
    while isinstance(info, mi.Metadata):
        info = info.type
    return info


_RULES = {
    "key": "must be 1-64 of A-Z a-z 0-9 . _ @ + -",
    "password_env": "must be a variable name",
}


def _problem(info: mi.Type | None, value: object, name: str) -> str:
    """What is wrong with ``value`` for a field of type ``info``, in the config's words."""
    got = f"got {show(value)}"
    if isinstance(info, mi.BoolType):
        return f"must be true or false, {got}"
    if isinstance(info, mi.IntType):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, {got}"
        span = f"{info.ge}..{info.le}" if info.le is not None else f">= {info.ge}"
        return f"must be in {span}, {got}"
    if isinstance(info, mi.FloatType):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number of seconds, {got}"
        return f"must be > 0 and finite, {got}"
    if isinstance(info, mi.StrType):
        if not isinstance(value, str) or not value.strip():
            return f"must be a non-empty string, {got}"
        if re.search(r"[\x00-\x1f\x7f]", value):
            return "must not contain control characters"
        return f"{_RULES.get(name, 'is not valid')}, {got}"
    if isinstance(info, mi.LiteralType):
        return f"must be one of {', '.join(map(repr, info.values))}, {got}"
    if isinstance(info, mi.StructType | mi.DataclassType | mi.DictType):
        return f"must be a table, got {kind(value)}"
    if isinstance(info, mi.ListType):
        return f"must be an array, got {kind(value)}"
    return f"is not valid, {got}"
