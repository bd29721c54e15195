"""SELinux "as if enabled" on a kernel without it: a stand-in for
``ketch.linux.label.Kernel``, installed with ``label.use(...)`` in the test
process, or in a ketch process through ``support.selinux_ketch`` (the
launcher the integration tests run instead of the installed ``ketch``).

Files are labeled for real (ext4 and tmpfs store ``security.selinux``
xattrs without an LSM); what the kernel cannot do here is stood in for:

- ``fsdir``: the selinuxfs directory.  SELinux counts as on while
  ``<fsdir>/enforce`` is a file and ``fsdir`` is not read-only (``""``: off).
- ``contexts``: the ``lxc_contexts`` file (default ``<fsdir>/lxc_contexts``;
  the host's /etc/selinux is never read).  ``<fsdir>/mls`` holding ``0``
  turns MCS off, as on a real selinuxfs.
- ``exec_attr``: a plain file the exec label is written to, because the real
  /proc attribute refuses writes without SELinux (EINVAL).  Unset: the real
  procfs file is used.
- ``mount_context=False``: mount data gets no ``context=`` (a kernel without
  SELinux refuses it on every filesystem: "tmpfs: Unknown parameter
  'context'"), so real mounts need it; mount *plans* can be checked without.
"""

import json
import os
import sys

from ketch.errors import SetupError, describe_oserror
from ketch.linux import label

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(os.path.dirname(TESTS), "src")


class FakeSelinux(label.Kernel):
    def __init__(self, fsdir, contexts=None, exec_attr=None, mount_context=True):
        self.fsdir = os.fspath(fsdir)
        self.contexts = os.fspath(contexts) if contexts is not None else None
        self.exec_attr = os.fspath(exec_attr) if exec_attr is not None else None
        self.mount_context_on = mount_context

    def selinuxfs(self):
        # Asked every time: a test remounts the directory read-only midway.
        return self.fsdir if self.fsdir and label.usable(self.fsdir) else ""

    def contexts_path(self, fsdir):
        return self.contexts if self.contexts is not None else os.path.join(fsdir, "lxc_contexts")

    def mount_context(self):
        return self.mount_context_on

    def open_exec_attr(self, proc=None):
        if not self.exec_attr:
            return super().open_exec_attr(proc)
        try:
            return os.open(self.exec_attr, os.O_WRONLY | os.O_CLOEXEC | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise SetupError(f"open {self.exec_attr}", describe_oserror(e)) from e

    def open_exec_attr_for_child(self):
        # A host file the exec child could not reach after its chroot: opened
        # by the parent, as the real per-thread attribute cannot be.
        return self.open_exec_attr() if self.exec_attr else None

    def settings(self):
        return {"fsdir": self.fsdir, "contexts": self.contexts, "exec_attr": self.exec_attr,
                "mount_context": self.mount_context_on}

    def prefix(self):
        """argv that runs ketch with this stand-in installed (add ketch's own arguments)."""
        return [sys.executable, "-I", "-S", os.path.join(TESTS, "support", "selinux_ketch.py"),
                json.dumps(self.settings())]

    def python(self, code):
        """argv for `python -c code` in a fresh interpreter with this stand-in installed."""
        boot = (f"import sys; sys.path[:0] = [{SRC!r}, {TESTS!r}]; import json; "
                f"from ketch.linux import label; from support.selinux import FakeSelinux; "
                f"label.use(FakeSelinux(**json.loads({json.dumps(self.settings())!r})))\n")
        return [sys.executable, "-I", "-c", boot + code]


def installed(k):
    """Context manager: `k` answers for label until the block ends."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        before = label._kernel
        label.use(k)
        try:
            yield k
        finally:
            label.use(before)

    return cm()
