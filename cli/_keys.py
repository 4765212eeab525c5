"""``fieldgate keys``: approvers' signing keys; private halves stay in FIELDGATE_HOME/keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import typer
from rich import box
from rich.table import Table

from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, handles_errors
from fieldgate.cli._rollout import DbOption, refuse
from fieldgate.errors import FieldgateError, InputInvalid, NotFound
from fieldgate.keyfiles import CONTROL_PLANE, key_file, load_key, save_key
from fieldgate.signing import SigningKey
from fieldgate.store import KeyPurpose, Store
from fieldgate.terminal import shown

keys_app = typer.Typer(
    help="Signing keys: make an approver key, list trusted keys.", no_args_is_help=True
)

OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def _owner(value: str) -> str:
    if not OWNER.match(value):
        raise typer.BadParameter(
            f"{value!r} is not an id: letters, digits and . _ @ - (at most 64), "
            "starting with a letter or digit"
        )
    if value == CONTROL_PLANE:
        raise typer.BadParameter(f"{value!r} is the control plane's own key")
    return value


def make_approver_key(
    store: Store, owner: str, keys_dir: Path, force: bool = False
) -> tuple[SigningKey, Path]:
    """Generate ``owner``'s ed25519 key, trust its public half as an approver key, save it
    under ``keys_dir``.

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
                "--force replaces it (approvals signed with the old key then stop counting)"
            )
    key = SigningKey.generate(owner)
    store.keys.trust(owner, key.public_b64, "approver")
    save_key(keys_dir, key)
    return key, path


@keys_app.command("init")
@handles_errors
def init(
    owner: str = typer.Option(..., "--as", help="Whose key: the approver's id.", callback=_owner),
    force: bool = typer.Option(False, "--force", help="Replace an existing key."),
    db: str = DbOption,
) -> None:
    """Make an approver's signing key, keep it in FIELDGATE_HOME/keys (0600), trust it."""
    config = command_config(db)
    with Store.open(config.database_url) as store:
        key, path = make_approver_key(store, owner, config.keys_dir, force)
    console.print(
        f"{key.key_id}: approver key of [bold]{shown(owner)}[/], private half in {path} (0600), "
        "public half trusted",
        highlight=False,
    )


@keys_app.command("list")
@handles_errors
def list_(db: str = DbOption) -> None:
    """List the trusted public keys and whether this machine holds the private half."""
    config = command_config(db)
    with Store.open(config.database_url) as store:
        keys = [key for purpose in get_args(KeyPurpose) for key in store.keys.for_purpose(purpose)]
    table = Table(
        title=f"trusted keys: {len(keys)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for column in ("key id", "owner", "purpose", "trusted since (UTC)", "private key here"):
        table.add_column(column)
    for key in keys:
        try:
            held = load_key(config.keys_dir, key.owner)
            here = "yes" if held.key_id == key.key_id else "no (another key)"
        except InputInvalid:  # a file that holds no key
            here = "unreadable"
        except FieldgateError:  # no key file, or an owner that cannot have one
            here = "no"
        table.add_row(
            key.key_id, shown(key.owner), key.purpose, f"{key.added_at:%Y-%m-%d %H:%M}", here
        )
    console.print(table)
