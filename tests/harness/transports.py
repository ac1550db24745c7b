"""A transport that keeps what is written to it, for driving a protocol without a socket.

``protocol.connection_made(RecordingTransport())`` and server lines fed through
``protocol.data_received``: what a unit test of line routing needs, and no more.
"""

from __future__ import annotations

from typing import Any


class RecordingTransport:
    """``written``: every ``write``, in order. Never closing; no extra info."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
