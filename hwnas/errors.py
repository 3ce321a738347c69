"""User-facing errors: the CLI prints them as one line and exits with code 2, never a traceback."""


class HwnasError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ArchError(HwnasError):
    """An architecture that is malformed or outside the search space."""
