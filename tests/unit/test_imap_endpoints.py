"""IMAPConnector.endpoints() follows its accounts as they change, though it reuses its last
answer's (host, port) pairs while they do not (the audit asks for them every time)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from guardedpool.imap import IMAPAccount, IMAPConnector

HOSTS = st.sampled_from(["10.0.0.1", "10.0.0.2", "::1", "192.0.2.7"])
PORTS = st.sampled_from([143, 993])
KEYS = st.sampled_from(["a", "b", "c", "d"])


def account(host: str, port: int) -> IMAPAccount:
    return IMAPAccount(host=host, port=port, username="u", password="pw")


# put: a new account object (maybe equal to the one it replaces); drop: remove the key
CHANGES = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, HOSTS, PORTS),
        st.tuples(st.just("drop"), KEYS, st.none(), st.none()),
    ),
    max_size=20,
)


@settings(max_examples=200)
@given(CHANGES)
def test_a_mapping_s_endpoints_follow_every_change(
    changes: list[tuple[str, str, str | None, int | None]],
) -> None:
    accounts: dict[str, IMAPAccount] = {}
    connector = IMAPConnector(accounts)
    assert connector.endpoints() == frozenset()
    for what, key, host, port in changes:
        if what == "put":
            assert host is not None and port is not None
            accounts[key] = account(host, port)
        else:
            accounts.pop(key, None)
        # IP literals need no resolver: every account's (host, port) is an endpoint
        assert connector.endpoints() == {(a.host, a.port) for a in accounts.values()}
        assert connector.endpoints() == {(a.host, a.port) for a in accounts.values()}


def test_a_host_name_counts_once_resolved_only() -> None:
    accounts = {"a": account("imap.example.test", 993)}
    connector = IMAPConnector(accounts)
    assert connector.endpoints() == frozenset()  # not resolved: nothing to match yet
    accounts["b"] = account("10.0.0.9", 993)
    assert connector.endpoints() == {("10.0.0.9", 993)}
