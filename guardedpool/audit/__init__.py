"""The leak auditor: hold the pool's books against the operating system's view.

``await pool.audit()`` lists the process's sockets (:mod:`.scan`), decides what does not
match the pool's records (:mod:`.classify`, pure), confirms and acts -- poison, retire,
force-close through a dup (:mod:`.enforce`; the rest of a force-close's check runs in the
background, :mod:`.verify`) -- and returns an :class:`AuditReport` (:mod:`.report`).
:mod:`.auditor` ties these together behind the :class:`AuditTarget` protocol, which the
pool's adapter :class:`.target.PoolTarget` (``pool.audit_target``)
implements.
"""

from __future__ import annotations

from .auditor import AuditTarget, run_audit
from .classify import Kind
from .report import Action, AuditReport, Finding, Verification
from .rows import OsSocket, ScanResult
from .scan import ScanError, scan

__all__ = [
    "Action",
    "AuditReport",
    "AuditTarget",
    "Finding",
    "Kind",
    "OsSocket",
    "ScanError",
    "ScanResult",
    "Verification",
    "run_audit",
    "scan",
]
