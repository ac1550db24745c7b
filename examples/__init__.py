"""Runnable examples built on guardedpool (``python -m examples.imap_sync demo``)."""
