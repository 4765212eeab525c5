"""Approvals: signed decisions of people on one revision of a plan.

The approver's roles are read from the roster when approvals are counted,
never from the approval itself; what counts is decided by policy.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from fieldgate.contract import Contract
from fieldgate.signing import SigningKey, verify


class Decision(StrEnum):
    """What an approver decided."""

    approve = "approve"
    reject = "reject"


class Approval(Contract):
    """One person's signed decision on one plan revision."""

    plan_id: str
    """Plan decided on."""
    plan_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the exact revision decided on."""
    approver: str = Field(min_length=1)
    """Who decided."""
    roles: list[str] = []
    """Roles the approver claims; informative only, the roster decides."""
    decision: Decision
    """approve or reject."""
    comment: str = ""
    """Why."""
    at: datetime
    """When the decision was made."""
    key_id: str = ""
    """Id of the key that signed."""
    signature: str = ""
    """Base64 ed25519 signature over every other field."""

    def signing_payload(self) -> dict[str, object]:
        """The fields the approver's key signs."""
        return self.model_dump(mode="json", exclude={"signature"})

    def signed_with(self, key: SigningKey) -> Approval:
        """Return this approval signed by ``key``."""
        unsigned = self.model_copy(update={"key_id": key.key_id, "signature": ""})
        return unsigned.model_copy(update={"signature": key.sign(unsigned.signing_payload())})

    def signature_valid(self, public_key_b64: str) -> bool:
        """Tell whether the signature verifies with the approver's public key."""
        return verify(public_key_b64, self.signing_payload(), self.signature)
