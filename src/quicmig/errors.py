"""Errors that the command line turns into one-line messages and exit codes."""


class QuicmigError(Exception):
    """A failure the user can act on; `str()` is the whole one-line message."""

    exit_code = 1


class InputError(QuicmigError):
    """Bad input: unknown names, malformed files, values out of range (exit status 2)."""

    exit_code = 2
