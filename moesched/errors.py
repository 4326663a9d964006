"""The one error type a user can cause.

Every mistake a user can make (a wrong flag, a malformed profile or plan, a model that
does not divide over the cluster) raises :class:`MoeschedError` with a one-line message.
The CLI prints it as ``moesched: error: ...`` and exits with status 2; no traceback.
"""


class MoeschedError(Exception):
    """A user-facing error; ``str(err)`` is a single line naming the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class MemoryRefusal(MoeschedError):
    """No EP size of the expert-parallel layout fits GPU memory (the solver's refusal,
    which a command may follow with a layout that does fit)."""
