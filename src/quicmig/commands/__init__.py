"""Subcommands of the `quicmig` command line; each module has `register(subparsers)`."""
