"""Errors that the command line turns into exit codes."""


class VascularINRError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(VascularINRError, ValueError):
    """Bad input or usage: the message names the problem (CLI exit code 2)."""


class FitCancelled(VascularINRError):
    """A fit was cancelled from another thread before it finished."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: the command stops and writes nothing."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
