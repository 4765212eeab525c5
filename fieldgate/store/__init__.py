"""Stores through SQLModel: catalog, keys, fleet, plans, approvals, the audit log, checkpoints.

One database URL (``FIELDGATE_DB``) holds them all, SQLite or PostgreSQL with the
same code::

    with Store.open(url) as store:
        store.audit.append("request", "human", "ana", {"text": "roll out hvac 2.4.1"})
        assert store.audit.verify().ok
"""

from fieldgate.store._approvals import ApprovalStore
from fieldgate.store._audit import AuditLog, NewEvent, VerifyResult
from fieldgate.store._catalog import CatalogRecord, CatalogStore, HeldMetadata, ImportResult
from fieldgate.store._checkpoints import AUDIT_TABLES, CheckpointStore, WatchedAuditLog
from fieldgate.store._conversations import Conversation, ConversationStore
from fieldgate.store._engine import open_engine
from fieldgate.store._fleet import Enrollment, FleetStore, FleetSummary, InventoryImport
from fieldgate.store._freeze import Freeze, FreezeStore
from fieldgate.store._keys import KeyPurpose, KeyStore, TrustedKey
from fieldgate.store._plans import PlanRecord, PlanStore
from fieldgate.store._runs import OPEN_STATUSES, Run, RunStore, StopStore
from fieldgate.store._store import Store

__all__ = [
    "AUDIT_TABLES",
    "OPEN_STATUSES",
    "ApprovalStore",
    "AuditLog",
    "CatalogRecord",
    "CatalogStore",
    "CheckpointStore",
    "Conversation",
    "ConversationStore",
    "Enrollment",
    "FleetStore",
    "FleetSummary",
    "Freeze",
    "FreezeStore",
    "HeldMetadata",
    "ImportResult",
    "InventoryImport",
    "KeyPurpose",
    "KeyStore",
    "NewEvent",
    "PlanRecord",
    "PlanStore",
    "Run",
    "RunStore",
    "StopStore",
    "Store",
    "TrustedKey",
    "VerifyResult",
    "WatchedAuditLog",
    "open_engine",
]
