"""Approvals: signed decisions of people on one revision of a plan.

The approver's roles are read from the roster when approvals are counted,
never from the approval itself; what counts is decided by policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import Field

from fieldgate.contract import Contract, canonical_json, sha256_hex
from fieldgate.signing import SigningKey, verify


class Decision(StrEnum):
    """What an approver decided."""

    approve = "approve"
    reject = "reject"


class Signed(Contract):
    """A person's record signed with their ed25519 key over every other field."""

    key_id: str = ""
    """Id of the key that signed."""
    signature: str = ""
    """Base64 ed25519 signature over every other field."""

    def signing_payload(self) -> dict[str, object]:
        """The fields the person's key signs."""
        return self.model_dump(mode="json", exclude={"signature"})

    def signed_with(self, key: SigningKey) -> Self:
        """Return this record signed by ``key``."""
        unsigned = self.model_copy(update={"key_id": key.key_id, "signature": ""})
        return unsigned.model_copy(update={"signature": key.sign(unsigned.signing_payload())})

    def signature_valid(self, public_key_b64: str) -> bool:
        """Tell whether the signature verifies with the person's public key."""
        return verify(public_key_b64, self.signing_payload(), self.signature)


class Approval(Signed):
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


class PlanEdit(Signed):
    """An approver's signed edit of one plan revision: the draft that is to replace it.

    The edit becomes a new revision that is validated and decided by policy again, and
    needs approvals of its own; the signature only binds the draft to who proposed it.
    """

    plan_id: str
    """Plan edited."""
    plan_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the exact revision edited."""
    editor: str = Field(min_length=1)
    """Who edits."""
    draft_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the canonical JSON of the draft (see :func:`draft_hash`)."""
    comment: str = ""
    """Why."""
    at: datetime
    """When the edit was made."""


def draft_hash(draft: Mapping[str, Any]) -> str:
    """The hash a :class:`PlanEdit` binds: sha256 of the draft's canonical JSON."""
    return sha256_hex(canonical_json(dict(draft)))
