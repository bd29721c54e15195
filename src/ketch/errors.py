"""One exception hierarchy for all of ketch.

The CLI is the only place that turns these into an exit code and a single
line on stderr; everything below it raises.  Imports nothing internal.
"""


class KetchError(Exception):
    """Base of every error ketch reports to a user."""

    exit_code = 1


class ConfigError(KetchError):
    """config.json (or process.json) is malformed or asks for something unsupported."""


class UsageError(KetchError):
    """Bad command line: unknown verb, flag, missing argument."""


class ContainerNotFound(KetchError):
    def __init__(self, cid):
        super().__init__(f"container {cid!r} does not exist")
        self.id = cid


class ContainerExists(KetchError):
    def __init__(self, cid):
        super().__init__(f"container {cid!r} already exists")
        self.id = cid


class InvalidState(KetchError):
    """A verb was asked of a container whose status does not allow it."""


class NotRunning(InvalidState):
    """The container (or its init) has stopped.

    The text is runc's: containerd's runc shim looks for "container not
    running" in a failed kill to treat the process as already finished
    (stopping a pod whose container exited depends on it)."""

    def __init__(self, msg="container not running"):
        super().__init__(msg)


class SecurityError(KetchError):
    """A request would break one of the security invariants (path escapes rootfs...)."""


class SetupError(KetchError):
    """A step of container setup failed; `step` names it for the user."""

    def __init__(self, step, cause=None):
        msg = step if cause is None else f"{step}: {cause}"
        super().__init__(msg)
        self.step = step
        self.cause = cause


class HookError(KetchError):
    pass


class StorageError(KetchError):
    """Engine: layer store, images."""


class ImageError(StorageError):
    pass


def describe_oserror(err):
    """`permission denied`-style text for an OSError, runc's lower-case wording."""
    import os

    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno).lower()
    return str(err)
