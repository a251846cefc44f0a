"""The one error type a user sees.

Anything the user can fix (a bad path, a bad protocol value, a foreign checkpoint) is raised as
:class:`UserError` with one sentence that names the bad field or file. The CLI prints that
sentence and exits with status 2; nothing else is printed and no partial result is left behind.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one sentence and exit status 2."""

    exit_code = 2
