"""The one exception a user's mistake turns into: the CLI prints its message on one line, without a traceback."""


class LabError(Exception):
    """A problem with the user's input or environment, explained in one line (what was wrong, what would be right)."""
