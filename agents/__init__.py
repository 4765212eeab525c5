"""Planner, validator and executor agents: prompts, structured outputs, the offline model."""
