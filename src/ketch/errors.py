"""One exception hierarchy for all of ketch.

The CLI is the only place that turns these into an exit code and a single
line on stderr; everything below it raises.  Imports nothing internal.
"""


class KetchError(Exception):
    """Base of every error ketch reports to a user."""

    exit_code = 1
    # True when the reason is on stderr already (a container's init wrote it
    # there itself): the CLI then adds no second line.
    reported = False


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
    """A step of container setup failed.

    ``step`` names it for the user ("mount tmpfs on /dev"); the second
    argument says why: the exception that made it fail (kept as ``cause``)
    or a text.  ``reason`` is the text either way ("" when none is known),
    so the message is always ``step: reason``; an OSError's file is named
    unless the step already does.
    """

    def __init__(self, step, why=None):
        if isinstance(why, BaseException):
            self.cause, self.reason = why, describe_oserror(why, step)
        else:
            self.cause, self.reason = None, why or ""
        super().__init__(f"{step}: {self.reason}" if self.reason else step)
        self.step = step


class HookError(KetchError):
    pass


class StorageError(KetchError):
    """Engine: layer store, images."""


class ImageError(StorageError):
    pass


class SyscallError(OSError):
    """An OSError that names the system call that failed (``op``), as runc's
    os.NewSyscallError and crun's crun_make_error do.  Made by ``syscall_error``
    so that it is also the errno's own OSError subclass (FileNotFoundError...)."""

    def __init__(self, op, err, path=None, path2=None):
        import os

        if path2 is None:
            super().__init__(err, os.strerror(err), path)
        else:
            super().__init__(err, os.strerror(err), path, None, path2)
        self.op = op

    def __str__(self):
        return f"{self.op}: {OSError.__str__(self)}"

    def __reduce__(self):
        return syscall_error, (self.op, self.errno, self.filename, self.filename2)


_SYSCALL_ERRORS = {}


def syscall_error(op, err, path=None, path2=None):
    """The SyscallError for errno ``err`` from ``op`` on ``path`` (and ``path2``)."""
    base = type(OSError(err, ""))  # the errno's own subclass, as OSError() picks it
    cls = _SYSCALL_ERRORS.get(base)
    if cls is None:
        cls = SyscallError if base is OSError else type(base.__name__, (SyscallError, base), {})
        _SYSCALL_ERRORS[base] = cls
    return cls(op, err, path, path2)


def describe_oserror(err, context=None):
    """`permission denied`-style text for an OSError, runc's lower-case wording;
    the error's own message when it has one (OSError(EXDEV, "resolves to /etc,
    outside the root") says that, not "invalid cross-device link").

    With ``context``, the text it will follow (a step: "join namespaces"),
    the call a SyscallError names and the OSError's file are put in front
    unless the context already shows them: "setns /proc/9/ns/ipc: invalid
    argument"."""
    import os

    if not (isinstance(err, OSError) and err.errno):
        return str(err)
    std = os.strerror(err.errno)
    text = err.strerror if err.strerror and err.strerror != std else std.lower()
    if context is None:
        return text
    name = os.fsdecode(err.filename) if isinstance(err.filename, (str, bytes)) and err.filename else ""
    op = err.op if isinstance(err, SyscallError) and err.op not in context else ""
    where = " ".join(w for w in (op, name if name not in context else "") if w)
    return f"{where}: {text}" if where else text
