"""The one error type a user sees.

Anything the user can fix (a bad path, a bad protocol value, a foreign checkpoint) is raised as
:class:`UserError` with one sentence that names the bad field or file. The CLI prints that
sentence and exits with status 2; nothing else is printed and no partial result is left behind.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one sentence and exit status 2."""

    exit_code = 2

    def sentence(self) -> str:
        """The user's sentence; a DataLoader worker wraps it in a traceback, whose last line holds it."""
        text = str(self)
        if "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            text = last.split(": ", 1)[1] if last.startswith(("UserError", "leoclr_cli.")) else last
        return text


#: exit status of a run stopped by SIGTERM/SIGINT after writing its checkpoint ("try again later",
#: EX_TEMPFAIL in sysexits.h): a job script can requeue it with ``--resume auto``.
EXIT_PREEMPTED = 75


class Preempted(UserError):
    """SIGTERM/SIGINT stopped the run at a step boundary after its checkpoint was written."""

    exit_code = EXIT_PREEMPTED
    prefix = "stopped"


class BadImage(UserError):
    """An image file that cannot be read or decoded (skipped with ``data.on_bad_image: skip``)."""
