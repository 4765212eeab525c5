"""Bearer tokens of people for the approval inbox, kept hashed in ``FIELDGATE_HOME``.

A token says who is signed in to ``fieldgate serve``; it grants no decision by itself
(decisions are signed with the person's own key in their browser). The file holds only
sha256 digests of the tokens: whoever reads it cannot sign in with what it holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

from pydantic import Field

from fieldgate.contract import Contract, read_json, validate_as
from fieldgate.errors import FieldgateError

TOKENS_FILE = "inbox-tokens.json"
"""File name of the token digests under ``FIELDGATE_HOME``."""

TOKEN_PREFIX = "fgi_"
"""What every inbox token starts with, so that a leaked one is recognisable."""


class TokenFile(Contract):
    """The inbox's bearer tokens, one digest per person."""

    tokens: dict[str, str] = Field(default_factory=dict)
    """Person id to the hex sha256 of their token."""


def token_digest(token: str) -> str:
    """The hex sha256 a token is kept as."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _read(path: Path) -> TokenFile:
    if not path.exists():
        return TokenFile()
    return validate_as(TokenFile, read_json(path), str(path))


def issue_token(path: Path, person: str) -> str:
    """Make a new token for ``person`` (replacing theirs) and keep its digest at ``path``.

    Returns:
        The token, which is shown once and stored nowhere.

    Raises:
        FieldgateError: ``person`` is not a person id.
        InputInvalid: the file is there but is not a token file.
    """
    if not person or not person.isprintable() or person.strip() != person:
        raise FieldgateError(f"{person!r} is not a person id")
    held = _read(path)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    updated = TokenFile(tokens={**held.tokens, person: token_digest(token)})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(updated.model_dump(), indent=2, sort_keys=True) + "\n")
    partial.chmod(0o600)
    partial.replace(path)
    return token


class TokenBook:
    """The people's token digests at one path, read again at every sign-in, so that a token
    made while the server runs works at once and a replaced one stops working."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def person(self, token: str | None) -> str | None:
        """Who ``token`` belongs to, or None; every digest is compared in constant time.

        Raises:
            InputInvalid: the file is there but is not a token file, naming it.
        """
        if not token:
            return None
        offered = token_digest(token)
        found: str | None = None
        for person, digest in _read(self.path).tokens.items():
            # No early exit: the time taken does not say which person, if any, matched.
            if hmac.compare_digest(offered, digest):
                found = person
        return found
