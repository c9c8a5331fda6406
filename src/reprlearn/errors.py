"""User-facing errors.

Every problem a user can fix (a bad path, a bad config value, an unknown method)
is raised as :class:`ReprlearnError` with a one-line message that names the
problem and the fix. The CLI prints such errors as one line, without a traceback.
"""


class ReprlearnError(Exception):
    """A problem with the user's input, explained in one line."""


def fail(message: str) -> "ReprlearnError":
    """Build a ReprlearnError; used as ``raise fail(...)`` so messages stay one line."""
    return ReprlearnError(" ".join(message.split()))
