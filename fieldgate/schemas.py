"""The contracts by the names ``fieldgate schema NAME`` knows, with their JSON Schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from fieldgate.approvals import Approval, PlanEdit
from fieldgate.audit import AuditEvent
from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.errors import NotFound
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogEntry, CatalogFile, ModuleManifest
from fieldgate.plan import RolloutPlan
from fieldgate.scenario import Scenario
from fieldgate.views import (
    ApprovalsList,
    ApprovalsShow,
    AuditShow,
    CatalogList,
    CatalogShow,
    FleetList,
    FleetShow,
    KeysList,
    KeysRoot,
    PolicyShow,
    RunsList,
    StatusReport,
)

CONTRACTS: dict[str, type[BaseModel]] = {
    "manifest": ModuleManifest,
    "catalog": CatalogFile,
    "catalog-entry": CatalogEntry,
    "fleet": FleetInventory,
    "plan": RolloutPlan,
    "command": DeviceCommand,
    "report": DeviceReport,
    "approval": Approval,
    "plan-edit": PlanEdit,
    "audit-event": AuditEvent,
    "scenario": Scenario,
    # what ``--json`` prints
    "status": StatusReport,
    "catalog-list": CatalogList,
    "catalog-show": CatalogShow,
    "fleet-list": FleetList,
    "fleet-show": FleetShow,
    "approvals-list": ApprovalsList,
    "approvals-show": ApprovalsShow,
    "keys-list": KeysList,
    "keys-root": KeysRoot,
    "audit-show": AuditShow,
    "policy-show": PolicyShow,
    "runs-list": RunsList,
}
"""Contract models by schema name."""


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the contract called ``name``."""
    try:
        model = CONTRACTS[name]
    except KeyError:
        known = ", ".join(sorted(CONTRACTS))
        raise NotFound(f"no contract named {name!r} (known: {known})") from None
    schema = model.model_json_schema(by_alias=True)
    schema["$id"] = f"https://fieldgate.dev/schemas/v1/{name}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
