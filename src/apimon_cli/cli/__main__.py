"""`python -m apimon_cli.cli`: the same as the `apimon` console script."""

from . import main

main()
