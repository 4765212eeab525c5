"""Tokens a model call spent: counted per node, added up per run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage


@dataclass
class Usage:
    """Tokens a node spent."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0

    def add(self, message: AIMessage) -> None:
        """Count the usage a model response reports."""
        meta = message.usage_metadata
        if meta is not None:
            self.input_tokens += meta["input_tokens"]
            self.output_tokens += meta["output_tokens"]
        self.calls += 1

    def as_dict(self) -> dict[str, int]:
        """The counts as a dict."""
        return {"input": self.input_tokens, "output": self.output_tokens, "calls": self.calls}


def total_tokens(by_node: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """The run's tokens: the per-node counts of the graph state's ``tokens``, added up."""
    total = {"input": 0, "output": 0, "calls": 0}
    for counts in by_node.values():
        for key in total:
            total[key] += int(counts.get(key, 0))
    return total
