"""``python -m errands``: the ``errands`` command."""

from errands.cli import main

main()
