"""fieldgate: agentic, policy-gated rollouts of prefabricated modules to edge fleets."""

__version__ = "0.1.0"
