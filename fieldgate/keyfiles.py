"""Private key files of this machine (``HOME/keys/OWNER.key``) and the control plane's key."""

from __future__ import annotations

from pathlib import Path

from fieldgate.errors import FieldgateError, InputInvalid, NotFound
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
    """Read the private key of ``owner`` (made by ``fieldgate keys init --as OWNER``).

    Raises:
        NotFound: there is no key file.
        InputInvalid: the file is not a key as ``keys init`` writes it, naming the file.
    """
    path = key_file(keys_dir, owner)
    if not path.exists():
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


def control_plane_key(store: Store, keys_dir: Path) -> SigningKey:
    """The control plane's command-signing key, made and trusted on first use."""
    try:
        key = load_key(keys_dir, CONTROL_PLANE)
    except NotFound:
        key = SigningKey.generate(CONTROL_PLANE)
        save_key(keys_dir, key)
    store.keys.trust(CONTROL_PLANE, key.public_b64, "control-plane")
    return key
