"""``fieldgate keys``: people's signing keys, their enrollment by root holders, the root itself.

Private halves stay in FIELDGATE_HOME/keys. A key counts only once root holders
enrolled it with a signed statement; nobody enrolls their own.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import typer
from rich import box
from rich.table import Table

from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli._common import command_config
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors, json_option, print_view
from fieldgate.cli._rollout import DbOption, refuse
from fieldgate.config import Config
from fieldgate.errors import FieldgateError, InputInvalid, NotFound
from fieldgate.keyfiles import (
    CONTROL_PLANE,
    enroll_with,
    key_file,
    load_key,
    load_pinned_root,
    pin_root,
    save_key,
)
from fieldgate.signing import SigningKey, key_id_of
from fieldgate.store import Store
from fieldgate.terminal import shown
from fieldgate.trust import EnrolledPurpose, KeyStatement, RootKey, TrustRoot, resolve_root
from fieldgate.views import KeyItem, KeysList, KeysRoot, RootKeyItem

keys_app = typer.Typer(
    help="Signing keys: make one, enroll or revoke one (root holders), list them, rotate the root.",
    no_args_is_help=True,
)
root_app = typer.Typer(help="The root of trust: show it, rotate a root key.", no_args_is_help=True)
keys_app.add_typer(root_app, name="root")

HolderOption = typer.Option(
    None, "--as", help="The root holder who signs (default: FIELDGATE_USER)."
)

OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
PURPOSES: tuple[str, ...] = get_args(EnrolledPurpose)


def _owner(value: str) -> str:
    if not OWNER.match(value):
        raise typer.BadParameter(
            f"{value!r} is not an id: letters, digits and . _ @ - (at most 64), "
            "starting with a letter or digit"
        )
    if value == CONTROL_PLANE:
        raise typer.BadParameter(f"{value!r} is the control plane's own key")
    return value


def _enrolled(value: str) -> EnrolledPurpose:
    if value == "approver":
        return "approver"
    if value == "control-plane":
        return "control-plane"
    if value == "factory":
        return "factory"
    refuse(f"--purpose {value!r} is not one of {', '.join(PURPOSES)}")


def make_approver_key(keys_dir: Path, owner: str, force: bool = False) -> tuple[SigningKey, Path]:
    """Generate ``owner``'s ed25519 key and save it under ``keys_dir`` (not yet trusted).

    Refuses to replace an existing key file unless ``force``.
    """
    path = key_file(keys_dir, owner)
    if not force:
        try:
            existing = load_key(keys_dir, owner)
        except NotFound:
            pass
        else:
            refuse(
                f"{path} already holds {owner}'s key {existing.key_id}; "
                "--force replaces it (it then needs enrolling again)"
            )
    key = SigningKey.generate(owner)
    save_key(keys_dir, key)
    return key, path


def current_root(config: Config, store: Store) -> TrustRoot:
    """The root of trust this machine follows: the pinned one and its signed successors.

    Raises:
        FieldgateError: nothing is pinned here.
    """
    pinned = load_pinned_root(config.trust_root_file)
    if pinned is None:
        raise FieldgateError(
            f"no root of trust is pinned at {config.trust_root_file}; run `fieldgate init` "
            "(or copy the deployment's trust-root.json there)"
        )
    root, _ = resolve_root(pinned, store.keys.roots())
    return root


def holding_root(config: Config, store: Store, holder: str) -> tuple[TrustRoot, SigningKey]:
    """The current root of trust and ``holder``'s root key from this home."""
    return current_root(config, store), load_key(config.keys_dir, holder, root=True)


def enroll_key(
    config: Config,
    store: Store,
    owner: str,
    purpose: EnrolledPurpose,
    holder: str,
    public_b64: str | None = None,
) -> tuple[bool, str, str]:
    """Sign ``owner``'s key enrollment with ``holder``'s root key and store it, audited.

    The public key is ``public_b64``, else the one of ``owner``'s key file in this home.

    Returns:
        Whether the key is trusted now, what it still lacks if not, and its key id.
    """
    root, signer = holding_root(config, store, holder)
    if public_b64 is None:
        public_b64 = load_key(config.keys_dir, owner).public_b64
    trusted, lacking = enroll_with(store, root, signer, owner, purpose, public_b64)
    key_id = key_id_of(public_b64)
    store.audit.append(
        EventKind.key,
        ActorKind.human,
        holder,
        {
            "action": "enroll",
            "owner": owner,
            "purpose": purpose,
            "key_id": key_id,
            "root_version": root.version,
            "trusted": trusted,
        },
    )
    return trusted, lacking, key_id


@keys_app.command("init")
@handles_errors
def init(
    owner: str = typer.Option(..., "--as", help="Whose key: the approver's id.", callback=_owner),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
    db: str = DbOption,
) -> None:
    """Make an approver's signing key in FIELDGATE_HOME/keys (0600). It counts only once a root
    holder enrolls it (`fieldgate keys enroll ID`)."""
    config = command_config(db)
    key, path = make_approver_key(config.keys_dir, owner, force)
    console.print(
        f"{key.key_id}: approver key of [bold]{shown(owner)}[/], private half in {path} (0600)\n"
        f"not trusted until a root holder enrolls it: fieldgate keys enroll {shown(owner)} "
        f"--public {key.public_b64} --as ROOT-HOLDER",
        highlight=False,
    )


@keys_app.command("enroll")
@handles_errors
def enroll(
    owner: str = typer.Argument(..., help="Whose key to enroll."),
    holder: str = HolderOption,
    public: str = typer.Option(
        None,
        "--public",
        "--public-key",
        help="The key's public half, base64 (default: OWNER's key file here).",
    ),
    purpose: str = typer.Option(
        "approver",
        "--purpose",
        help="approver, control-plane or factory (signs manifests and catalog metadata).",
    ),
    db: str = DbOption,
) -> None:
    """Sign and store the enrollment of OWNER's key, as a root holder (k of n sign in turn)."""
    config = command_config(db)
    holder = holder or config.actor()
    with Store.open(config.database_url) as store:
        trusted, lacking, key_id = enroll_key(
            config, store, owner, _enrolled(purpose), holder, public
        )
    if trusted:
        console.print(
            f"{key_id}: {shown(owner)}'s {purpose} key, enrolled by {shown(holder)}: trusted",
            highlight=False,
        )
    else:
        console.print(
            f"{key_id}: signed by {shown(holder)}; not trusted yet: {shown(lacking)}",
            highlight=False,
        )


@keys_app.command("revoke")
@handles_errors
def revoke(
    key_id: str = typer.Argument(..., help="The key to revoke (see `keys list`)."),
    holder: str = HolderOption,
    reason: str = typer.Option(..., "--reason", help="Why the key no longer counts."),
    db: str = DbOption,
) -> None:
    """Revoke an enrolled key: approvals (or, for a factory key, manifests and catalog metadata)
    signed with it stop counting."""
    config = command_config(db)
    holder = holder or config.actor()
    with Store.open(config.database_url) as store:
        root, signer = holding_root(config, store, holder)
        enrolled = store.keys.statement(key_id)
        if enrolled is None:
            refuse(f"no key {key_id} is stored")
        statement = KeyStatement(
            action="revoke",
            owner=enrolled.owner,
            purpose=enrolled.purpose,
            key_id=enrolled.key_id,
            public_b64=enrolled.public_b64,
            at=datetime.now(UTC),
            reason=reason,
        ).signed_with(signer)
        problems, _ = statement.problems(root)
        if problems:
            refuse(f"the revocation does not hold: {'; '.join(problems)}")
        store.keys.revoke(statement)
        store.audit.append(
            EventKind.key,
            ActorKind.human,
            holder,
            {"action": "revoke", "owner": enrolled.owner, "key_id": key_id, "reason": reason},
        )
    console.print(f"{key_id}: revoked by {shown(holder)}", highlight=False)


@keys_app.command("list")
@handles_errors
def list_(db: str = DbOption, json_: bool = json_option("keys-list")) -> None:
    """List the stored keys, whether each is trusted (and why not), and whether this machine
    holds its private half; exit 1 when a key row is bad (forged, edited or unsigned)."""
    config = command_config(db)
    with Store.open(config.database_url) as store:
        trust = store.keys.judge(load_pinned_root(config.trust_root_file))
    failed = bool(trust.root_problems) or any(v.status == "bad" for v in trust.verdicts)
    if json_:
        print_view(
            KeysList(
                root_version=trust.root.version if trust.root else None,
                keys=[
                    KeyItem(
                        key_id=v.key.key_id,
                        owner=v.key.owner,
                        purpose=v.key.purpose,
                        status=v.status,
                        reason=v.reason,
                        private_key_here=_held_here(config, v.key.owner, v.key.key_id),
                    )
                    for v in trust.verdicts
                ],
                root_problems=list(trust.root_problems),
            )
        )
        if failed:
            raise typer.Exit(EXIT_FAILED)
        return
    table = Table(
        title=f"keys: {len(trust.verdicts)}"
        + (f" (root version {trust.root.version})" if trust.root else " (no root pinned)"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for column in ("key id", "owner", "purpose", "status", "private key here"):
        table.add_column(column, overflow="fold")
    for verdict in trust.verdicts:
        key = verdict.key
        table.add_row(
            key.key_id,
            shown(key.owner),
            key.purpose,
            verdict.status,
            _held_here(config, key.owner, key.key_id),
        )
    console.print(table)
    for verdict in trust.verdicts:
        if verdict.status in ("bad", "untrusted", "pending"):
            key = verdict.key
            console.print(
                f"{key.key_id} ({shown(key.owner)}, {key.purpose}): {verdict.status}: "
                f"{shown(verdict.reason)}",
                highlight=False,
            )
    for problem in trust.root_problems:
        console.print(f"[red]root of trust: {shown(problem)}[/]", highlight=False)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _held_here(config: Config, owner: str, key_id: str) -> str:
    try:
        held = load_key(config.keys_dir, owner)
    except InputInvalid:  # a file that holds no key
        return "unreadable"
    except FieldgateError:  # no key file, or an owner that cannot have one
        return "no"
    return "yes" if held.key_id == key_id else "no (another key)"


@root_app.command("show")
@handles_errors
def root_show(db: str = DbOption, json_: bool = json_option("keys-root")) -> None:
    """Show the root of trust: its version, threshold and root keys."""
    config = command_config(db)
    with Store.open(config.database_url) as store:
        root = current_root(config, store)
    if json_:
        print_view(
            KeysRoot(
                version=root.version,
                threshold=root.threshold,
                keys=[RootKeyItem(key_id=k.key_id, holder=k.holder) for k in root.keys],
                at=root.at,
            )
        )
        return
    console.print(
        f"root version {root.version}: {root.threshold} of {len(root.keys)} root keys sign",
        highlight=False,
    )
    for key in root.keys:
        console.print(f"  {key.key_id}  {shown(key.holder)}", highlight=False)


@root_app.command("rotate")
@handles_errors
def root_rotate(
    holder: str = typer.Option(
        None, "--as", help="The root holder whose key is replaced (default: FIELDGATE_USER)."
    ),
    db: str = DbOption,
) -> None:
    """Replace your root key: a new root version signed by your old key and your new one.

    With a threshold above 1 the other holders co-sign it with `keys root sign VERSION`.
    Enrollments you signed are signed again with the new key; the old key stops counting
    once the new version is current.
    """
    config = command_config(db)
    holder = holder or config.actor()
    with Store.open(config.database_url) as store:
        root, old = holding_root(config, store, holder)
        if root.key(old.key_id) is None:
            refuse(f"{holder}'s root key {old.key_id} is not a key of root version {root.version}")
        new = SigningKey.generate(holder)
        keys = tuple(
            RootKey(key_id=new.key_id, holder=holder, public_b64=new.public_b64)
            if k.key_id == old.key_id
            else k
            for k in root.keys
        )
        successor = TrustRoot(
            version=root.version + 1, threshold=root.threshold, keys=keys, at=datetime.now(UTC)
        )
        successor = successor.signed_with(old).signed_with(new)
        problems = root.successor_problems(successor)
        save_key(config.keys_dir, new, root=True)
        store.keys.add_root(successor)
        # Signed again now: the new key's signatures count once the new version is current.
        resigned = store.keys.resign(old.key_id, new)
        if not problems:
            pin_root(config.trust_root_file, successor)
        store.audit.append(
            EventKind.key,
            ActorKind.human,
            holder,
            {
                "action": "rotate-root",
                "version": successor.version,
                "old_key_id": old.key_id,
                "new_key_id": new.key_id,
                "current": not problems,
            },
        )
    if problems:
        console.print(
            f"root version {successor.version} proposed; not current yet: "
            f"{shown('; '.join(problems))}",
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILED)
    console.print(
        f"root version {successor.version}: {shown(holder)}'s root key is now {new.key_id}; "
        f"{resigned} enrollment(s) signed again",
        highlight=False,
    )


@root_app.command("sign")
@handles_errors
def root_sign(
    version: int = typer.Argument(..., help="The proposed root version to co-sign."),
    holder: str = HolderOption,
    db: str = DbOption,
) -> None:
    """Co-sign a proposed root version with your root key (k of n rotate the root together)."""
    config = command_config(db)
    holder = holder or config.actor()
    with Store.open(config.database_url) as store:
        root, signer = holding_root(config, store, holder)
        proposed = next((r for r in store.keys.roots() if r.version == version), None)
        if proposed is None or version != root.version + 1:
            refuse(f"no root version {version} is proposed (the current one is {root.version})")
        if root.key(signer.key_id) is None and proposed.key(signer.key_id) is None:
            refuse(f"{holder}'s root key {signer.key_id} is in neither root version")
        signed = store.keys.cosign_root(proposed.signed_with(signer))
        problems = root.successor_problems(signed)
        if not problems:
            pin_root(config.trust_root_file, signed)
        store.audit.append(
            EventKind.key,
            ActorKind.human,
            holder,
            {"action": "sign-root", "version": version, "current": not problems},
        )
    if problems:
        console.print(
            f"root version {version} signed by {shown(holder)}; not current yet: "
            f"{shown('; '.join(problems))}",
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILED)
    console.print(f"root version {version} is current", highlight=False)
