"""Cutting a sequence into consecutive batches of a bounded size."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Yield ``items`` in order, in slices of ``size`` (the last one may be shorter).

    Used to keep ``IN (...)`` lists under a database's bound-parameter limit and to
    split devices among processes or parallel slots.
    """
    for start in range(0, len(items), size):
        yield items[start : start + size]
