"""``fieldgate db``: the database itself, e.g. the least-privilege role to run fieldgate as."""

from __future__ import annotations

from pathlib import Path

import typer

from fieldgate.cli._output import console, handles_errors
from fieldgate.errors import InputInvalid
from fieldgate.store._roles import APPEND_ONLY_GRANTS, make_app_role

db_app = typer.Typer(help="The database: roles to run fieldgate with.", no_args_is_help=True)


@db_app.command("roles")
@handles_errors
def roles(
    admin_url: str = typer.Option(
        ...,
        "--admin-url",
        help="PostgreSQL URL of an administrator (owner of the schema, may create roles).",
    ),
    app_role: str = typer.Option(
        "fieldgate_app", "--app-role", help="Name of the role the application runs as."
    ),
    password_file: Path = typer.Option(
        None,
        "--password-file",
        help="A file whose first line is the role's password (default: leave it unset).",
    ),
) -> None:
    """Create the PostgreSQL role fieldgate should run as: it cannot rewrite the audit log.

    The tables and the audit guards are created first, owned by the administrator. The
    role is no superuser (so it cannot SET session_replication_role = replica to skip
    the guards) and owns no audit table: on audit_event, audit_checkpoint and
    audit_log_id it may only SELECT and INSERT; on audit_head, which every append locks
    and moves, SELECT and UPDATE. No UPDATE, DELETE or TRUNCATE of events. On every
    other table it has the usual rights. Run it again after an upgrade. Then set
    FIELDGATE_DB to the URL it prints.
    """
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            problem = f"cannot read a password from its first line ({exc or 'empty'})"
            raise InputInvalid(str(password_file), [("", problem)]) from None
    url = make_app_role(admin_url, app_role, password)
    rights = "; ".join(f"{table}: {grants}" for table, grants in APPEND_ONLY_GRANTS.items())
    console.print(f"role {app_role}: not superuser; {rights}; other tables: the usual rights")
    console.print(f"run fieldgate as it: FIELDGATE_DB={url}", highlight=False)
