"""The `mig-orchestrator` command: one module per group of subcommands, listed in cli/main.py.

Nothing is imported here, so `python3 -m orchestrator.cli.engine` runs on the standard library.
"""
