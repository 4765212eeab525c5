"""Device identity: enrolling each device's own key, and the one check of what devices send.

Every field agent (and every simulated device of the twin) has an ed25519 key of its own
and signs each report and hello with it. The fleet enrolls the public half
(:meth:`enroll_devices`, audited); :func:`refusal_of` is the one check the gateway and
the twin transport run on every report and hello before it may reach a health gate, the
device view or the fleet inventory. It refuses what is:

- ``unsigned``: no signature;
- ``unenrolled``: from a device with no enrolled key;
- ``forged``: a signature that does not verify with the device's enrolled key (a
  rogue's own key, another device's key, or a changed document);
- ``future``: stamped further ahead of the control plane's clock than the allowed skew;
- ``never-sent``: a report for a command the device was never sent;
- ``replayed``: an old signed reading sent again: its clock is not newer than one
  already taken from the device, and it is not the resend of the document already
  taken (a stored report again, the retained hello again).

A first answer to a command sent to the device and not yet answered is never a replay,
whatever its clock says: command ids are unique, so the device signed exactly one report
for it. That keeps outbox resends after a reconnect (which follow a newer hello) valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fieldgate.audit import ActorKind, EventKind
from fieldgate.commands import DeviceReport
from fieldgate.config import DEFAULT_DEVICE_CLOCK_SKEW_S
from fieldgate.edge._device import REFUSED_PREFIX
from fieldgate.edge._wire import Hello
from fieldgate.signing import key_id_of, verify
from fieldgate.store import Enrollment, NewEvent, Store

MAX_CLOCK_SKEW_S = DEFAULT_DEVICE_CLOCK_SKEW_S
"""Seconds a device's clock may run ahead of the control plane's before its input is refused
(the default of ``FIELDGATE_DEVICE_CLOCK_SKEW``)."""


class Refusal(StrEnum):
    """Why a report or hello from a device is refused."""

    unsigned = "unsigned"
    unenrolled = "unenrolled"
    forged = "forged"
    future = "future"
    never_sent = "never-sent"
    replayed = "replayed"


@dataclass(frozen=True)
class Refused:
    """A refused report or hello: the kind and a sentence naming what is wrong."""

    kind: Refusal
    reason: str


@dataclass(frozen=True)
class Known:
    """What the control plane knows of a device when one of its documents arrives."""

    public_key: str | None
    """The device's enrolled key (None: none enrolled)."""
    newest: tuple[int, int] = (-1, -1)
    """The newest clock reading already taken from the device."""
    sent_to: str | None = None
    """Reports: the device the command was sent to (None: the control plane never sent it)."""
    answered: bool = False
    """Reports: whether the command has its answer already."""
    taken_signature: str | None = None
    """Signature of the document of this kind already taken (the command's stored report,
    the last hello): the same document sent again is a harmless resend."""


def refusal_of(
    document: DeviceReport | Hello, known: Known, now_ms: int, max_skew_ms: int
) -> Refused | None:
    """Check one report or hello against the device's key, the clock and the ledger.

    Args:
        document: What the device sent (parsed; its topic already matched).
        known: What the control plane knows of the device and, for a report, its command.
        now_ms: The control plane's clock (wall or virtual) in milliseconds.
        max_skew_ms: How far ahead of ``now_ms`` a device's clock may be.

    Returns:
        None when the document may count; else why it is refused.
    """
    device_id, what = document.device_id, _what(document)
    if not document.signature:
        return Refused(Refusal.unsigned, f"{what} from {device_id} is not signed")
    if known.public_key is None:
        return Refused(
            Refusal.unenrolled, f"{what} from {device_id}, a device with no enrolled key"
        )
    if not verify(known.public_key, document.signing_payload(), document.signature):
        return Refused(
            Refusal.forged,
            f"{what} from {device_id} does not verify with its enrolled key "
            f"{key_id_of(known.public_key)}",
        )
    hlc = document.hlc
    if hlc is not None and hlc.wall_ms > now_ms + max_skew_ms:
        ahead = (hlc.wall_ms - now_ms) / 1000
        return Refused(
            Refusal.future,
            f"{what} from {device_id} is stamped {ahead:.1f} s ahead of the control plane's "
            f"clock (at most {max_skew_ms / 1000:g} s allowed)",
        )
    answers = isinstance(document, DeviceReport) and not document.command_id.startswith(
        REFUSED_PREFIX
    )
    if answers:
        assert isinstance(document, DeviceReport)
        if known.sent_to is None:
            return Refused(
                Refusal.never_sent,
                f"report for {document.command_id}, a command the control plane never sent",
            )
        if known.sent_to != device_id:
            return Refused(
                Refusal.never_sent,
                f"report for {document.command_id}, a command sent to {known.sent_to}",
            )
        if not known.answered:
            return None  # the one answer the device signed for this command id
    if hlc is None or (hlc.wall_ms, hlc.counter) > known.newest:
        return None
    if document.signature == known.taken_signature:
        return None
    return Refused(
        Refusal.replayed,
        f"{what} from {device_id} replayed: its clock ({hlc.wall_ms}, {hlc.counter}) is not "
        f"newer than one already taken ({known.newest[0]}, {known.newest[1]})",
    )


def _what(document: DeviceReport | Hello) -> str:
    if isinstance(document, Hello):
        return "hello"
    if document.command_id.startswith(REFUSED_PREFIX):
        return "refusal report"
    return f"report for {document.command_id}"


def enroll_devices(
    store: Store,
    keys: Mapping[str, str],
    actor: str,
    *,
    actor_kind: ActorKind = ActorKind.human,
    replace: bool = False,
) -> list[Enrollment]:
    """Enroll device keys (device id -> base64 public key) and audit each change, together.

    Enrolling the key a device has already changes nothing and audits nothing.

    Raises:
        InputInvalid: a key is not an ed25519 public key.
        NotFound: a device is not in the fleet.
        DeviceKeyConflict: a device has another key and ``replace`` is not set.
    """
    with store.writing("enrolling device keys") as tx:
        changed = store.fleet.enroll(keys, actor, replace=replace, tx=tx)
        store.audit.append_many(
            [
                NewEvent(
                    kind=EventKind.fleet,
                    actor_kind=actor_kind,
                    actor=actor,
                    payload={
                        "action": "re-enroll" if e.previous_key_id else "enroll",
                        "device": e.device_id,
                        "key_id": e.key_id,
                        "public_key": e.public_key,
                        **({"replaced": e.previous_key_id} if e.previous_key_id else {}),
                    },
                )
                for e in changed
            ],
            tx=tx,
        )
    return changed
