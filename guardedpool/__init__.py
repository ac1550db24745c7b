"""guardedpool: a bounded, self-auditing pool of long-lived IMAP connections."""
