"""Private key files of this machine (``HOME/keys/OWNER.key``) and the control plane's key."""

from __future__ import annotations

from pathlib import Path

from fieldgate.errors import FieldgateError, NotFound
from fieldgate.signing import SigningKey
from fieldgate.store import Store

CONTROL_PLANE = "control-plane"
"""Owner id of the control plane's command-signing key."""


def key_file(keys_dir: Path, owner: str) -> Path:
    """Where the private key of ``owner`` is kept under ``keys_dir``."""
    if not owner or "/" in owner or owner.startswith("."):
        raise FieldgateError(f"{owner!r} is not a valid key owner id")
    return keys_dir / f"{owner}.key"


def save_key(keys_dir: Path, key: SigningKey) -> Path:
    """Write a private key readable by its owner only."""
    path = key_file(keys_dir, key.owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.private_b64() + "\n")
    path.chmod(0o600)
    return path


def load_key(keys_dir: Path, owner: str) -> SigningKey:
    """Read the private key of ``owner`` (made by ``fieldgate keys init --as OWNER``)."""
    path = key_file(keys_dir, owner)
    if not path.exists():
        raise NotFound(f"no key for {owner!r} at {path}; run `fieldgate keys init --as {owner}`")
    return SigningKey.from_private_b64(owner, path.read_text().strip())


def control_plane_key(store: Store, keys_dir: Path) -> SigningKey:
    """The control plane's command-signing key, made and trusted on first use."""
    try:
        key = load_key(keys_dir, CONTROL_PLANE)
    except NotFound:
        key = SigningKey.generate(CONTROL_PLANE)
        save_key(keys_dir, key)
    store.keys.trust(CONTROL_PLANE, key.public_b64, "control-plane")
    return key
