"""Approvals as received: every field of the signed decision, kept so the signature re-verifies."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Field, col, select

from fieldgate.approvals import Approval
from fieldgate.contract import canonical_json, sha256_hex
from fieldgate.errors import ApprovalInvalid
from fieldgate.store._engine import for_writing, transaction
from fieldgate.store._plans import PlanRow
from fieldgate.store._table import (
    StoreTable,
    as_utc,
    from_json_text,
    json_text,
    utc_now,
    utc_time_field,
)


class ApprovalRow(StoreTable, table=True):
    """One approval, its fields stored in their signed (JSON) form."""

    __tablename__ = "approval"

    id: int | None = Field(default=None, primary_key=True)
    plan_id: str = Field(index=True)
    plan_hash: str = Field(index=True)
    approver: str
    roles_json: str
    decision: str
    comment: str
    at: str
    """The decision time exactly as signed (JSON form), so the signature re-verifies."""
    key_id: str
    signature: str
    approval_hash: str = Field(unique=True)
    """sha256 of the whole approval: the same approval received twice is stored once."""
    received_at: datetime = utc_time_field()


def _approval(row: ApprovalRow) -> Approval:
    return Approval.model_validate(
        {
            "plan_id": row.plan_id,
            "plan_hash": row.plan_hash,
            "approver": row.approver,
            "roles": from_json_text(row.roles_json),
            "decision": row.decision,
            "comment": row.comment,
            "at": row.at,
            "key_id": row.key_id,
            "signature": row.signature,
        }
    )


class ApprovalStore:
    """Signed approvals of plan revisions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def add(self, approval: Approval, received_at: datetime | None = None) -> Approval:
        """Store ``approval``; the identical approval received again is stored once.

        ``received_at`` is when it arrived on the control plane's clock of what people do
        (default: now); the approval deadline and the clock skew are judged against it.

        The signature is not judged here (the roster and policy do that), but the
        approval must name a stored plan revision.

        Raises:
            ApprovalInvalid: no stored revision of the plan has the approval's hash.
        """
        fields = approval.model_dump(mode="json")
        approval_hash = sha256_hex(canonical_json(fields))
        with transaction(self._writer, f"storing the approval of {approval.approver}") as session:
            plan = session.exec(
                select(PlanRow.plan_id).where(PlanRow.plan_hash == approval.plan_hash)
            ).first()
            if plan != approval.plan_id:
                raise ApprovalInvalid(
                    f"approval by {approval.approver} names plan {approval.plan_id} with hash "
                    f"{approval.plan_hash[:12]}…, which is not a stored revision of that plan"
                )
            seen = session.exec(
                select(ApprovalRow).where(ApprovalRow.approval_hash == approval_hash)
            ).first()
            if seen is None:
                session.add(
                    ApprovalRow(
                        plan_id=approval.plan_id,
                        plan_hash=approval.plan_hash,
                        approver=approval.approver,
                        roles_json=json_text(fields["roles"]),
                        decision=fields["decision"],
                        comment=approval.comment,
                        at=fields["at"],
                        key_id=approval.key_id,
                        signature=approval.signature,
                        approval_hash=approval_hash,
                        received_at=received_at or utc_now(),
                    )
                )
        return approval

    def for_plan(self, plan_id: str, plan_hash: str | None = None) -> list[Approval]:
        """Return the plan's approvals (of one revision with ``plan_hash``), as received."""
        query = select(ApprovalRow).where(ApprovalRow.plan_id == plan_id)
        if plan_hash is not None:
            query = query.where(ApprovalRow.plan_hash == plan_hash)
        with transaction(self._engine, f"reading approvals of plan {plan_id}") as session:
            return [_approval(row) for row in session.exec(query.order_by(col(ApprovalRow.id)))]

    def received(self, plan_id: str) -> list[tuple[Approval, datetime]]:
        """The plan's approvals as received, each with when it arrived."""
        query = select(ApprovalRow).where(ApprovalRow.plan_id == plan_id)
        with transaction(self._engine, f"reading approvals of plan {plan_id}") as session:
            rows = session.exec(query.order_by(col(ApprovalRow.id)))
            return [(_approval(row), as_utc(row.received_at)) for row in rows]
