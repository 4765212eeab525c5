"""Private key files of this machine and the pinned root of trust.

A person's keys live in their own ``FIELDGATE_HOME/keys``: ``OWNER.key`` signs their
approvals and edits, ``OWNER.root.key`` is their root key when they hold one. The
root of trust this machine starts from is pinned in ``FIELDGATE_HOME/trust-root.json``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fieldgate.errors import FieldgateError, InputInvalid, NotFound
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.trust import EnrolledPurpose, TrustRoot, enrollment, new_root

CONTROL_PLANE = "control-plane"
"""Owner id of the control plane's command-signing key."""

ROOT_SUFFIX = ".root"
"""What a root key's file name adds before ``.key``."""


def key_file(keys_dir: Path, owner: str, *, root: bool = False) -> Path:
    """Where the private key of ``owner`` (their root key, with ``root``) is kept."""
    if not owner or "/" in owner or owner.startswith("."):
        raise FieldgateError(f"{owner!r} is not a valid key owner id")
    return keys_dir / f"{owner}{ROOT_SUFFIX if root else ''}.key"


def save_key(keys_dir: Path, key: SigningKey, *, root: bool = False) -> Path:
    """Write a private key readable by its owner only."""
    path = key_file(keys_dir, key.owner, root=root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.private_b64() + "\n")
    path.chmod(0o600)
    return path


def load_key(keys_dir: Path, owner: str, *, root: bool = False) -> SigningKey:
    """Read the private key of ``owner`` (their root key, with ``root``).

    Raises:
        NotFound: there is no key file.
        InputInvalid: the file is not a key as ``keys init`` writes it, naming the file.
    """
    path = key_file(keys_dir, owner, root=root)
    if not path.exists():
        if root:
            raise NotFound(f"{owner} holds no root key here ({path})")
        raise NotFound(f"no key for {owner!r} at {path}; run `fieldgate keys init --as {owner}`")
    try:
        return SigningKey.from_private_b64(owner, path.read_bytes().decode("ascii").strip())
    except ValueError:  # not ASCII, not base64, or not 32 bytes: binascii and cryptography say so
        raise InputInvalid(
            str(path),
            [
                (
                    "",
                    "not a private key (expected the base64 of 32 bytes, as `fieldgate keys "
                    f"init` writes it); `fieldgate keys init --as {owner} --force` makes a new one",
                )
            ],
        ) from None
    except OSError as exc:
        raise InputInvalid(str(path), [("", f"cannot read file: {exc.strerror or exc}")]) from None


def load_pinned_root(path: Path) -> TrustRoot | None:
    """The root of trust pinned at ``path``, or None when nothing is pinned there.

    Raises:
        FieldgateError: the file is there but is not root metadata.
    """
    if not path.exists():
        return None
    try:
        return TrustRoot.model_validate_json(path.read_bytes())
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise FieldgateError(f"{path}: not a root of trust ({first})") from None


def pin_root(path: Path, root: TrustRoot) -> None:
    """Pin ``root`` at ``path`` (written whole, then moved into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(root.model_dump_json(indent=2) + "\n")
    partial.replace(path)


def control_plane_key(store: Store, keys_dir: Path) -> SigningKey:
    """The control plane's command-signing key, made on first use.

    It is trusted only once a root holder enrolls it (``fieldgate init`` does, and
    ``fieldgate keys enroll control-plane --purpose control-plane``); until then the first
    one stored is a key whose enrollment is unsigned, which ``keys list`` shows as such.
    """
    try:
        key = load_key(keys_dir, CONTROL_PLANE)
    except NotFound:
        key = SigningKey.generate(CONTROL_PLANE)
        save_key(keys_dir, key)
    if not store.keys.for_purpose("control-plane"):
        # First use of the database; a second machine's key is not stored beside the first
        # (it would be an unenrolled control-plane key, which voids the enrolled one).
        store.keys.trust(CONTROL_PLANE, key.public_b64, "control-plane")
    return key


def enroll_with(
    store: Store,
    root: TrustRoot,
    signer: SigningKey,
    owner: str,
    purpose: EnrolledPurpose,
    public_b64: str,
) -> tuple[bool, str]:
    """Sign (or co-sign) the enrollment of ``public_b64`` as ``owner``'s key and store it.

    Returns:
        Whether the key is now trusted, and what the statement still lacks if not.

    Raises:
        FieldgateError: the signer holds no key of the current root, or enrolls their own key.
    """
    held = root.key(signer.key_id)
    if held is None:
        raise FieldgateError(
            f"{signer.owner}'s root key {signer.key_id} is not a key of root version {root.version}"
        )
    if held.holder == owner:
        raise FieldgateError(f"nobody enrolls their own key: {owner} cannot enroll {owner}'s key")
    statement = enrollment(owner, purpose, public_b64, datetime.now(UTC))
    stored = store.keys.statement(statement.key_id)
    if stored is not None and stored.action == "enroll" and stored.owner == owner:
        statement = stored
    merged = store.keys.enroll(statement.signed_with(signer))
    problems, _ = merged.problems(root)
    return not problems, "; ".join(problems)


def establish_root(
    store: Store, keys_dir: Path, pin: Path, holders: list[str], threshold: int
) -> tuple[TrustRoot, bool]:
    """The deployment's root of trust: the one pinned at ``pin``, or a new one.

    A new root gets a fresh root key per holder (saved here as ``HOLDER.root.key``, for
    each holder to move to their own FIELDGATE_HOME) and is stored and pinned; the
    control plane's key is enrolled under it.

    Returns:
        The root, and whether it was made now.

    Raises:
        FieldgateError: the holders or threshold cannot make a root.
    """
    pinned = load_pinned_root(pin)
    if pinned is not None:
        store.keys.add_root(pinned)
        return pinned, False
    if not holders or len(set(holders)) != len(holders):
        raise FieldgateError("a root of trust needs one or more distinct root holders")
    if not 1 <= threshold <= len(holders):
        raise FieldgateError(
            f"--root-threshold {threshold} must be between 1 and the {len(holders)} holder(s)"
        )
    keys = {holder: SigningKey.generate(holder) for holder in holders}
    for key in keys.values():
        save_key(keys_dir, key, root=True)
    root = new_root(keys, threshold, datetime.now(UTC))
    store.keys.add_root(root)
    pin_root(pin, root)
    control = control_plane_key(store, keys_dir)
    for key in list(keys.values())[:threshold]:
        enroll_with(store, root, key, CONTROL_PLANE, "control-plane", control.public_b64)
    return root, True
