"""`python -m fedsim` runs the CLI."""

from fedsim.cli.main import main

main()
