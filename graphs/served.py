"""The graph ``langgraph.json`` exposes: the rollout graph over the configured deployment.

A LangGraph API server runs it with its own checkpointer and without a fieldgate
context, so its nodes are given :func:`served_context`, built from the environment
once per process.
"""

from __future__ import annotations

from fieldgate.graphs.compose import served_context
from fieldgate.graphs.rollout import compile_graph

graph = compile_graph(context=served_context)
"""The compiled graph (the API server supplies the checkpointer)."""
