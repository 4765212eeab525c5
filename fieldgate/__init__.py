"""fieldgate: agentic, policy-gated rollouts of prefabricated modules to edge fleets."""

__version__ = "0.1.0"

# `make setup` installs the package as a strict editable install: setuptools links every
# file of the package, laid out the way it imports (fieldgate/graphs/, fieldgate/cli/, ...),
# into one tree under build/, which is what mypy and Python read. When the checkout's root
# is itself on sys.path (`python -m pytest`, `python -c` run from it), this directory is
# found first and holds only the core; extending the path takes the linked tree's other
# subpackages in too. In any other install there is one fieldgate/ and this changes nothing.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
