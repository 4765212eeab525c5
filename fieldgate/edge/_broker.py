"""A Mosquitto 2.x set-up that lets only the fleet in, each identity to its own topics.

:func:`write_broker_config` writes into one directory:

- ``mosquitto.conf``: one listener (TLS with ``tls=True``), no anonymous clients, the
  password and ACL files below, persistence under ``data/``;
- ``passwords``: one salted PBKDF2-SHA512 hash per identity, in Mosquitto's own ``$7$``
  format (what ``mosquitto_passwd`` writes), so the control plane needs no Mosquitto;
- ``acl``: each device may read only its own ``cmd`` and ``desired`` topics and write
  only its own ``report`` and ``hello`` topics; the gateway may write every device's
  ``cmd`` and ``desired`` and read every ``report`` and ``hello``; nobody gets more;
- ``credentials/{identity}.json`` (0600): each identity's password, for its client;
- with TLS, ``tls/``: a CA of this deployment (``ca.pem`` is what clients trust) and the
  broker's certificate for localhost and 127.0.0.1 (and any extra names).

The directory is built beside the target and swapped in whole, so a failure leaves the
previous set-up as it was. A re-run keeps every password and the CA unless ``rotate``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldgate.edge._credentials import (
    CREDENTIALS_DIR,
    GATEWAY_IDENTITY,
    BrokerCredentials,
    read_credentials,
    write_credentials,
)
from fieldgate.edge._wire import Broker, Channel, check_segment
from fieldgate.errors import InputInvalid

MARKER = "# Written by `fieldgate broker config`"
"""First line of every generated ``mosquitto.conf``: a directory without it is not replaced."""

PBKDF2_ITERATIONS = 1000
"""Rounds of the password hashes (Mosquitto's own default is 101; passwords here are random)."""

_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")

MAX_QUEUED = 10000
"""QoS 1 messages the broker queues per client while it is away (Mosquitto's default: 1000)."""


@dataclass(frozen=True)
class BrokerSetup:
    """What :func:`write_broker_config` wrote (no secrets)."""

    directory: Path
    """The output directory."""
    identities: int
    """Identities with a password: the devices and the gateway."""
    kept: int
    """Of them, how many kept the password they had."""
    url: str
    """The broker's URL for clients."""
    ca_file: Path | None
    """The CA clients trust (TLS only)."""

    @property
    def credentials(self) -> Path:
        """The credentials directory (``FIELDGATE_MQTT_CREDENTIALS``)."""
        return self.directory / CREDENTIALS_DIR

    @property
    def config_file(self) -> Path:
        """``mosquitto.conf``."""
        return self.directory / "mosquitto.conf"


def mosquitto_hash(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash ``password`` as ``mosquitto_passwd`` does: ``$7$ROUNDS$SALT$PBKDF2-SHA512``."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(topic_root: str, devices: Sequence[tuple[str, str]]) -> str:
    """The ACL file: the gateway's rights, then each device's own four topics."""
    broker = Broker(topic_root=topic_root)
    lines = [
        MARKER,
        "# Each identity reaches only the topics below; anything else is denied.",
        "",
        f"user {GATEWAY_IDENTITY}",
        f"topic write {broker.every(Channel.cmd)}",
        f"topic write {broker.every(Channel.desired)}",
        f"topic read {broker.every(Channel.report)}",
        f"topic read {broker.every(Channel.hello)}",
    ]
    for site, device in devices:
        lines += [
            "",
            f"user {device}",
            f"topic read {broker.topic(site, device, Channel.cmd)}",
            f"topic read {broker.topic(site, device, Channel.desired)}",
            f"topic write {broker.topic(site, device, Channel.report)}",
            f"topic write {broker.topic(site, device, Channel.hello)}",
        ]
    return "\n".join(lines) + "\n"


def _checked_devices(devices: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    problems = []
    seen: set[str] = set()
    for site, device in devices:
        for value, what in ((site, "site"), (device, "device")):
            try:
                check_segment(value, what)
            except InputInvalid:
                problems.append((what, f"{value!r} cannot be a broker identity or topic segment"))
        if device == GATEWAY_IDENTITY:
            problems.append(("device", f"{device!r} is the gateway's identity"))
        if device in seen:
            problems.append(("device", f"{device!r} appears twice"))
        seen.add(device)
    if problems:
        raise InputInvalid("fleet", problems)
    return sorted(devices, key=lambda pair: pair[1])


def _existing(directory: Path) -> bool:
    """Whether ``directory`` holds a set-up this module wrote (raise if it holds anything else)."""
    if not directory.exists():
        return False
    if not directory.is_dir():
        raise InputInvalid(str(directory), [("", "exists and is not a directory")])
    config = directory / "mosquitto.conf"
    try:
        ours = config.read_text(encoding="utf-8").startswith(MARKER)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours and any(directory.iterdir()):
        raise InputInvalid(
            str(directory),
            [("", "is not empty and holds no set-up of `fieldgate broker config`; pick another")],
        )
    return ours


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _names(extra: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in ["localhost", "127.0.0.1", "::1", *extra]:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            general: x509.GeneralName = x509.DNSName(name)
        else:
            if address.is_unspecified:
                continue
            general = x509.IPAddress(address)
        if general not in names:
            names.append(general)
    return names


def _write_tls(target: Path, previous: Path | None, server_names: Sequence[str]) -> None:
    """A CA (kept from ``previous`` when there is one) and a fresh server certificate."""
    target.mkdir(mode=0o700)
    now = dt.datetime.now(dt.UTC)
    if previous is not None and (previous / "ca.key").is_file():
        ca_key_pem = (previous / "ca.key").read_bytes()
        ca_pem = (previous / "ca.pem").read_bytes()
        loaded = serialization.load_pem_private_key(ca_key_pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise InputInvalid(str(previous / "ca.key"), [("", "is not an EC private key")])
        ca_key, ca = loaded, x509.load_pem_x509_certificate(ca_pem)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldgate broker CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca_key_pem, ca_pem = _pem_key(ca_key), ca.public_bytes(serialization.Encoding.PEM)
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldgate broker")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_names(server_names)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(target / "ca.key", ca_key_pem)
    (target / "ca.pem").write_bytes(ca_pem)
    (target / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private(target / "server.key", _pem_key(key))


def _config_text(directory: Path, port: int, bind: str, tls: bool, run_as: str | None) -> str:
    lines = [
        MARKER + "; write it again rather than edit it.",
        "# Reload passwords and ACL without dropping clients: kill -HUP the broker.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {directory / 'passwords'}",
        f"acl_file {directory / 'acl'}",
        "persistence true",
        f"persistence_location {directory / 'data'}/",
        "autosave_interval 30",
        f"max_queued_messages {MAX_QUEUED}",
    ]
    if run_as:
        lines.append(f"user {run_as}")
    lines += ["", f"listener {port} {bind}"]
    if tls:
        lines += [
            f"cafile {directory / 'tls' / 'ca.pem'}",
            f"certfile {directory / 'tls' / 'server.pem'}",
            f"keyfile {directory / 'tls' / 'server.key'}",
            "tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def write_broker_config(
    directory: Path,
    devices: Sequence[tuple[str, str]],
    *,
    topic_root: str = "fieldgate",
    port: int | None = None,
    bind: str = "127.0.0.1",
    host: str | None = None,
    tls: bool = False,
    server_names: Sequence[str] = (),
    rotate: bool = False,
    run_as: str | None = None,
) -> BrokerSetup:
    """Write the broker's set-up for ``devices`` (``(site, device_id)`` pairs) into ``directory``.

    Args:
        directory: Output directory; replaced whole if it holds an earlier set-up.
        devices: The devices that get an identity.
        topic_root: First topic segment of the ACL.
        port: Listener port (default 8883 with TLS, else 1883).
        bind: Address the listener binds to.
        host: Name or address clients use (default: ``bind``, or 127.0.0.1 for any).
        tls: Listen with TLS only, with a certificate from a CA made here.
        server_names: More names or addresses for the broker's certificate.
        rotate: New passwords (and a new CA) for everyone instead of the kept ones.
        run_as: System user Mosquitto runs as (``user`` line); it must read the files.

    Raises:
        InputInvalid: a device id, site or setting cannot be used, or the directory is
            not one to replace; nothing was written.
    """
    chosen = _checked_devices(devices)
    check_segment(topic_root, "--topic-root")
    port = port or (8883 if tls else 1883)
    if not 0 < port < 65536:
        raise InputInvalid("--port", [("", f"must be 1 to 65535, got {port}")])
    try:
        unspecified = ipaddress.ip_address(bind).is_unspecified
    except ValueError:
        raise InputInvalid("--bind", [("", f"{bind!r} is not an IP address")]) from None
    host = host or ("127.0.0.1" if unspecified else bind)
    if run_as is not None and not _USER.match(run_as):
        raise InputInvalid("--run-as", [("", f"{run_as!r} is not a system user name")])
    directory = directory.resolve()
    if any(c.isspace() or not c.isprintable() for c in str(directory)):
        # Mosquitto's configuration lines end at a space: such a path cannot be written there.
        raise InputInvalid(
            "--out", [("", f"{str(directory)!r} holds a space or control character")]
        )
    existed = _existing(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        identities = [GATEWAY_IDENTITY, *(device for _, device in chosen)]
        ca_file = directory / "tls" / "ca.pem" if tls else None
        credentials = staging / CREDENTIALS_DIR
        credentials.mkdir(mode=0o700)
        kept = 0
        hashes_by_identity: list[str] = []
        for identity in identities:
            password = None
            old = directory / CREDENTIALS_DIR
            if existed and not rotate and (old / f"{identity}.json").exists():
                password = read_credentials(old, identity).password
            if password is None:
                password = secrets.token_urlsafe(32)
            else:
                kept += 1
            write_credentials(
                credentials,
                BrokerCredentials(
                    username=identity,
                    password=password,
                    ca_file=str(ca_file) if ca_file else None,
                ),
            )
            hashes_by_identity.append(f"{identity}:{mosquitto_hash(password)}")
        _write_private(staging / "passwords", ("\n".join(hashes_by_identity) + "\n").encode())
        _write_private(staging / "acl", acl_text(topic_root, chosen).encode())
        if tls:
            previous = directory / "tls" if existed and not rotate else None
            _write_tls(staging / "tls", previous, [bind, host, *server_names])
        if existed and (directory / "data").is_dir():
            # The broker's saved sessions and retained messages outlive a new set-up.
            shutil.copytree(directory / "data", staging / "data")
        else:
            (staging / "data").mkdir(mode=0o700)
        (staging / "mosquitto.conf").write_text(
            _config_text(directory, port, bind, tls, run_as), encoding="utf-8"
        )
        staging.chmod(0o700)
        _swap(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    scheme = "mqtts" if tls else "mqtt"
    return BrokerSetup(
        directory=directory,
        identities=len(identities),
        kept=kept,
        url=f"{scheme}://{host}:{port}",
        ca_file=ca_file,
    )


def _swap(staging: Path, directory: Path) -> None:
    """Put ``staging`` in the place of ``directory``; on failure leave the old one there."""
    if not directory.exists():
        staging.rename(directory)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
    retired.rmdir()
    directory.rename(retired)
    try:
        staging.rename(directory)
    except BaseException:
        retired.rename(directory)
        raise
    shutil.rmtree(retired, ignore_errors=True)
