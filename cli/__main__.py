"""``python -m fieldgate.cli``: the same as the ``fieldgate`` command."""

from fieldgate.cli import main

main()
