"""The LangGraph rollout graph: state, nodes, checkpointer choice."""
