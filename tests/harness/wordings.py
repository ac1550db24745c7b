"""How real providers refuse: the wordings the refusal classifier is tested against.

Collected from provider documentation and public reports (issue trackers of imapsync,
ImapFlow/EmailEngine, MailKit, node-imap, imap_tools, offlineimap, imapfilter, Stalwart,
Cyrus and Dovecot sources, hosting knowledge bases), paraphrased where a report carried
personal details: user names, addresses, host names and ids are replaced by neutral ones.
Each row is the status text as it follows ``tag NO`` / ``tag BAD`` / ``* BYE`` on the wire.

The scripted provider server (:mod:`harness.provider`) replays these rows at login, at
SELECT, mid-FETCH and during IDLE; ``tests/unit/test_imap_refusals.py`` checks the
classifier against them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WORDINGS", "Wording"]


@dataclass(frozen=True, slots=True)
class Wording:
    """One refusal as a provider sends it, and what it means.

    ``phase`` is where it was reported ("login" or "command"); ``kind`` and ``delay``
    (seconds) are what the classifier must make of it.
    """

    provider: str
    status: str  # "NO", "BAD" or "BYE"
    phase: str  # "login" or "command"
    text: str
    kind: str
    delay: float | None = None
    source: str = ""

    @property
    def id(self) -> str:
        return f"{self.provider}:{self.status}:{self.text[:40]}"


WORDINGS: tuple[Wording, ...] = (
    # Gmail: 15 simultaneous connections per account; bandwidth and command quotas.
    Wording("gmail", "NO", "login", "[ALERT] Too many simultaneous connections. (Failure)",
            "capacity", source="MailKit #377, wildduck #35, libetpan #160"),
    Wording("gmail", "BYE", "command", "[OVERQUOTA] Account exceeded command or bandwidth limits.",
            "throttled", source="providers.md"),
    Wording("gmail", "NO", "login",
            "[ALERT] Account exceeded command or bandwidth limits. (Failure)", "throttled",
            source="Gmail help: IMAP bandwidth limits"),
    Wording("gmail", "BYE", "command", "[UNAVAILABLE] Temporary System Error", "throttled",
            source="public client logs"),
    Wording("gmail", "NO", "login", "[AUTHENTICATIONFAILED] Invalid credentials (Failure)",
            "auth", source="MailKit #377"),
    Wording("gmail", "NO", "login",
            "[ALERT] Application-specific password required: https://support.example/pw "
            "(Failure)", "auth", source="Gmail help: app passwords"),
    Wording("gmail", "NO", "login", "[WEBALERT https://accounts.example/c] Web login required.",
            "auth", source="public client logs"),
    Wording("gmail", "NO", "login",
            "[ALERT] Your account is not enabled for IMAP use. (Failure)", "auth",
            source="Gmail help: enable IMAP"),
    # Office 365 / Outlook.com: throttling with a suggested backoff, then BYE.
    Wording("office365", "BAD", "command",
            "Request is throttled. Suggested Backoff Time: 299961 milliseconds", "throttled",
            299.961, source="imapsync FAQ.Office365, imapsync #272"),
    Wording("office365", "NO", "command",
            "Request is throttled. Suggested Backoff Time: 299609 milliseconds", "throttled",
            299.609, source="imapsync #198 (APPEND)"),
    Wording("office365", "NO", "command",
            "Request is throttled. Suggested Backoff Time: 299910 milliseconds", "throttled",
            299.910, source="imap_tools #135 (FETCH)"),
    Wording("office365", "BAD", "login",
            "Request is throttled. Suggested Backoff Time: 89117 milliseconds", "throttled",
            89.117, source="email-oauth2-proxy #191"),
    Wording("office365", "BAD", "command", "User is authenticated but not connected.",
            "throttled", source="node-imap #523: after frequent reconnects"),
    Wording("office365", "NO", "login", "LOGIN failed.", "auth", source="public client logs"),
    Wording("office365", "NO", "login", "AUTHENTICATE failed.", "auth", source="MailKit #849"),
    Wording("office365", "BYE", "command", "Connection closed. 14", "other",
            source="MailKit #849"),
    # Exchange on-premises (MaxConnectionsPerUser 16; backend or throttling trouble).
    Wording("exchange", "NO", "command", "Server Unavailable. 15", "throttled",
            source="imapfilter #146"),
    Wording("exchange", "NO", "login", "Server Unavailable. 15", "throttled",
            source="imapfilter #146"),
    # Yahoo: rate limit on any command, followed by BYE.
    Wording("yahoo", "NO", "command", "[LIMIT] CAPABILITY Rate limit hit.", "throttled",
            source="imapflow #75"),
    Wording("yahoo", "NO", "login", "[LIMIT] LOGIN Rate limit hit.", "throttled",
            source="imapflow #75 (same wording at LOGIN)"),
    Wording("yahoo", "BYE", "command", "IMAP4rev1 Server logging out", "other",
            source="imapflow #75"),
    Wording("yahoo", "NO", "command", "UID FETCH Server error - Please try again later",
            "throttled", source="imap-backup #218"),
    Wording("yahoo", "NO", "login", "[AUTHENTICATIONFAILED] LOGIN Invalid credentials", "auth",
            source="public client logs"),
    # iCloud: a login answered BAD [UNAVAILABLE] used to be reported as bad credentials.
    Wording("icloud", "BAD", "login", "[UNAVAILABLE] Service temporarily unavailable",
            "throttled", source="mailcore2 #1642"),
    Wording("icloud", "NO", "login", "[AUTHENTICATIONFAILED] Authentication failed", "auth",
            source="imapfilter #125"),
    # Fastmail: a login rate limit per 10 minutes (the number is not a delay).
    Wording("fastmail", "NO", "login",
            'login not available on this server. 451 Already reached per-10 minute limit for '
            'logins by "user" of 500, try again later', "throttled",
            source="OpenArchiver #37"),
    Wording("fastmail", "NO", "login", "[AUTHENTICATIONFAILED] Authentication failed", "auth",
            source="public client logs"),
    # Dovecot: mail_max_userip_connections (older [UNAVAILABLE], newer [LIMIT]).
    Wording("dovecot", "NO", "login",
            "[UNAVAILABLE] Maximum number of connections from user+IP exceeded "
            "(mail_max_userip_connections=16)", "capacity", source="node-imap #606"),
    Wording("dovecot", "NO", "login",
            "[LIMIT] Maximum number of connections from user+IP exceeded "
            "(mail_max_userip_connections=10)", "capacity", source="Dovecot 2.3 imap-login"),
    Wording("dovecot", "NO", "login",
            "[UNAVAILABLE] Temporary authentication failure. [mail.example:2026-11-29 12:00:00]",
            "throttled", source="Dovecot auth"),
    Wording("dovecot", "NO", "login", "[AUTHENTICATIONFAILED] Authentication failed.", "auth",
            source="Dovecot auth"),
    Wording("dovecot", "NO", "login",
            "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
            "connections.", "auth", source="Dovecot disable_plaintext_auth"),
    Wording("dovecot", "NO", "command", "[OVERQUOTA] Quota exceeded (mailbox for user is full)",
            "other", source="Dovecot quota plugin (APPEND)"),
    Wording("dovecot", "NO", "command",
            "[SERVERBUG] Internal error occurred. Refer to server log for more information.",
            "other", source="Dovecot"),
    Wording("dovecot", "BYE", "command", "Disconnected for inactivity.", "other",
            source="Dovecot"),
    Wording("dovecot", "BYE", "command", "Server shutting down.", "other", source="Dovecot"),
    Wording("dovecot", "NO", "command", "[INUSE] Mailbox is locked, try again later",
            "throttled", source="RFC 5530 INUSE example, paraphrased"),
    # Cyrus: maxlogins_per_user / maxlogins_per_host.
    Wording("cyrus", "NO", "login", "Too many open connections (3 of 3 for user)", "capacity",
            source="cyrus-imapd imapd.c checklimits"),
    Wording("cyrus", "NO", "login", "Too many open connections (10 of 10 from client.example)",
            "capacity", source="cyrus-imapd imapd.c checklimits"),
    Wording("cyrus", "NO", "login", "Login failed: authentication failure", "auth",
            source="cyrus-imapd"),
    Wording("cyrus", "NO", "command", "[OVERQUOTA] Over quota", "other",
            source="cyrus-imapd (APPEND)"),
    # Courier: MAXPERIP closes before the greeting (a transport-level drop, not a text);
    # its authentication daemon reports temporary trouble in words.
    Wording("courier", "NO", "login", "Temporary problem, please try again later", "throttled",
            source="courier-authlib"),
    Wording("courier", "NO", "login", "Login failed.", "auth", source="courier-imap"),
    # Stalwart: 16 sessions per account.
    Wording("stalwart", "NO", "login", "[LIMIT] Too many concurrent connections.", "capacity",
            source="stalwart #190"),
    # RFC 5530 codes with no telling text.
    Wording("rfc5530", "NO", "login", "[LIMIT] Try another time", "capacity", source="RFC 5530"),
    Wording("rfc5530", "NO", "command", "[LIMIT] Try another time", "throttled",
            source="RFC 5530"),
    Wording("rfc5530", "NO", "login", "[UNAVAILABLE] Try another time", "throttled",
            source="RFC 5530"),
    Wording("rfc5530", "NO", "login", "[INUSE] Try another time", "throttled", source="RFC 5530"),
    Wording("rfc5530", "BYE", "command", "[OVERQUOTA] Goodbye", "throttled", source="RFC 5530"),
    Wording("rfc5530", "NO", "command", "[LIMIT] Message too large", "other",
            source="RFC 5530 LIMIT (a size limit)"),
    Wording("rfc5530", "BAD", "command", "[LIMIT] Too many messages in search result", "other",
            source="illustrative size limit, not a provider quote"),
    Wording("rfc5530", "NO", "login", "[AUTHORIZATIONFAILED] No such authorization-ID", "auth",
            source="RFC 5530"),
    Wording("rfc5530", "NO", "login", "[EXPIRED] That password isn't valid any more", "auth",
            source="RFC 5530"),
    Wording("rfc5530", "NO", "login", "[CONTACTADMIN] Contact the administrator", "auth",
            source="RFC 5530"),
)
