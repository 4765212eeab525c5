"""A least-privilege PostgreSQL role for the application, which cannot rewrite the audit log.

Connected as a superuser, the application (or whoever takes over its connection) can
``SET session_replication_role = replica`` and no trigger guards the log any more.
The role made here is no superuser and owns none of the audit tables: on them it may
only SELECT and INSERT, except the one-row head, which appends must lock and move
(SELECT and UPDATE). On every other table it has the usual rights, and it may create
tables in the schema (LangGraph's checkpointer makes its own).
"""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from fieldgate.errors import InputInvalid, StoreError
from fieldgate.store._checkpoints import AUDIT_TABLES
from fieldgate.store._engine import is_sqlite, normalize_url, open_engine, reason_of
from fieldgate.store._store import Store

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
APPEND_ONLY_GRANTS = {table: "SELECT, INSERT" for table in AUDIT_TABLES}
"""What the application role may do on each audit table."""
APPEND_ONLY_GRANTS["audit_head"] = "SELECT, UPDATE"
_OTHER_GRANTS = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def make_app_role(admin_url: str, role: str, password: str | None = None) -> str:
    """Create (or bring back in line) ``role`` on the database at ``admin_url``.

    Creates fieldgate's tables and guards first, as the admin, so the admin owns them.
    Running it again resets the role's rights (after an upgrade added tables, say).

    Args:
        admin_url: A PostgreSQL URL of a role that may create roles and owns the schema.
        role: The application role's name (lower-case letters, digits, ``_``).
        password: Its login password; None leaves it as it is (or without one).

    Returns:
        The URL the application should connect with (``FIELDGATE_DB``), without password.

    Raises:
        InputInvalid: the URL is not PostgreSQL or the name is not a role name.
        StoreError: the database refused.
    """
    if not _NAME.match(role):
        rule = f"{role!r} is not a role name: lower-case letters, digits and _ (at most 63)"
        raise InputInvalid("--app-role", [("", rule)])
    engine = open_engine(admin_url)
    try:
        if is_sqlite(engine):
            rule = "database roles need PostgreSQL (postgresql+psycopg://…); SQLite has none"
            raise InputInvalid("--admin-url", [("", rule)])
        Store(engine).init()
        with engine.begin() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar()
            if schema is None:
                raise StoreError("the admin connection has no current schema (search_path)")
            exists = conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
            ).first()
            attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
            if password is not None:
                attributes += f" PASSWORD {_quote(password)}"
            verb = "ALTER" if exists else "CREATE"
            conn.exec_driver_sql(f'{verb} ROLE "{role}" {attributes}')
            database = conn.execute(text("SELECT current_database()")).scalar()
            conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
            conn.exec_driver_sql(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": schema},
            ).scalars()
            for table in tables:
                conn.exec_driver_sql(f'REVOKE ALL ON "{schema}"."{table}" FROM "{role}"')
                grants = APPEND_ONLY_GRANTS.get(table, _OTHER_GRANTS)
                conn.exec_driver_sql(f'GRANT {grants} ON "{schema}"."{table}" TO "{role}"')
            conn.exec_driver_sql(
                f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"'
            )
            conn.exec_driver_sql(
                f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" '
                f'GRANT {_OTHER_GRANTS} ON TABLES TO "{role}"'
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"creating the role {role}: {reason_of(exc)}") from exc
    finally:
        engine.dispose()
    url = make_url(normalize_url(admin_url)).set(username=role, password=None)
    return url.render_as_string(hide_password=False)
