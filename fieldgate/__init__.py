"""fieldgate: agentic, policy-gated rollouts of prefabricated modules to edge fleets."""

__version__ = "0.1.0"

# In the checkout, fieldgate/cli, agents, graphs, tools, evals and policies are symbolic links
# to the top-level folders that pyproject's package-dir maps into fieldgate.*, so that tools
# that import or scan the package from the repository's root (python -m, lint-imports) see
# it whole, as installed.
