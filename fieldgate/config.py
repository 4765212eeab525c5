"""Where fieldgate keeps its state, read from the environment once per call site."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The directory for fieldgate's local state (``FIELDGATE_HOME``, default ``~/.fieldgate``)."""
    return Path(os.environ.get("FIELDGATE_HOME") or Path.home() / ".fieldgate")


def database_url() -> str:
    """The database URL (``FIELDGATE_DB``, default a SQLite file under the home directory)."""
    url = os.environ.get("FIELDGATE_DB")
    if url:
        return url
    return f"sqlite:///{home_dir() / 'fieldgate.db'}"
