"""Broker identities: who a client is at the broker, and the files its password lives in.

``fieldgate broker config`` gives every device an identity named by its device id and
the control plane one, :data:`GATEWAY_IDENTITY`, each with its own random password. A
client finds its password in a credentials directory, one file ``{identity}.json`` per
identity, readable by its owner only: the gateway's machine holds the gateway's file, a
device its own. Passwords never travel on a command line or in a spec file.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from fieldgate.contract import Contract
from fieldgate.edge._wire import Broker
from fieldgate.errors import CredentialsInvalid

GATEWAY_IDENTITY = "fieldgate-gateway"
"""The broker identity of the control plane (gateway, worker, watchers)."""

CREDENTIALS_DIR = "credentials"
"""Where ``fieldgate broker config`` puts the credentials files, under its output directory."""


class BrokerCredentials(Contract):
    """One identity's way into the broker, as stored in ``{identity}.json`` (mode 0600)."""

    username: str
    """The identity: a device id, or :data:`GATEWAY_IDENTITY`."""
    password: str
    """Its password (the broker keeps only a salted hash)."""
    ca_file: str | None = None
    """The CA that signed the broker's TLS certificate, when the broker speaks TLS."""


def credentials_file(directory: Path, identity: str) -> Path:
    """The file holding ``identity``'s credentials under ``directory``."""
    return directory / f"{identity}.json"


def write_credentials(directory: Path, credentials: BrokerCredentials) -> Path:
    """Write ``credentials`` to their file, created with mode 0600 (never readable by others)."""
    path = credentials_file(directory, credentials.username)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(credentials.model_dump(mode="json"), indent=2) + "\n")
    return path


def read_credentials(directory: Path, identity: str) -> BrokerCredentials:
    """Read ``identity``'s credentials from ``directory``.

    Raises:
        CredentialsInvalid: the file is missing, others may read it, or it is malformed.
    """
    path = credentials_file(directory, identity)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialsInvalid(
                str(path), [("", f"mode {stat.S_IMODE(mode):04o}: others may read it; chmod 600")]
            )
        credentials = BrokerCredentials.model_validate_json(path.read_bytes())
    except OSError as exc:
        problem = f"cannot read the credentials of {identity!r}: {exc.strerror or exc}"
        raise CredentialsInvalid(str(path), [("", problem)]) from None
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
        raise CredentialsInvalid(str(path), problems) from None
    if credentials.username != identity:
        problem = f"holds the credentials of {credentials.username!r}, not {identity!r}"
        raise CredentialsInvalid(str(path), [("username", problem)])
    return credentials


def as_identity(broker: Broker, directory: Path, identity: str) -> Broker:
    """``broker`` with ``identity``'s user name, password and CA from ``directory``.

    Raises:
        CredentialsInvalid: see :func:`read_credentials`.
    """
    credentials = read_credentials(directory, identity)
    return replace(
        broker,
        username=credentials.username,
        password=credentials.password,
        ca_file=credentials.ca_file or broker.ca_file,
    )
