"""The planning layer (`ketch plan`, the unit tests' fake) must never touch
the system: PlanningSyscalls inherits from the real Syscalls, so a method
added to Syscalls and forgotten in PlanningSyscalls would make a dry run
change the host.  Every public method of Syscalls is overridden, or listed
here with the reason it is harmless."""

import os

from ketch.linux.mountopts import MS
from ketch.linux.planning import PlanningSyscalls
from ketch.linux.syscalls import Syscalls

HARMLESS = {
    "close_root": "closes the layer's own cached root fd, which the planning layer never opens",
}


def _public_methods(cls):
    return {n for c in cls.__mro__ if c is not object for n, v in vars(c).items()
            if callable(v) and not n.startswith("_")}


def test_every_real_method_is_planned():
    missing = sorted(n for n in _public_methods(Syscalls)
                     if n not in vars(PlanningSyscalls) and n not in HARMLESS)
    assert not missing, f"PlanningSyscalls inherits real system calls: {missing}"


def test_harmless_list_is_current():
    for n in HARMLESS:
        assert n in _public_methods(Syscalls) and n not in vars(PlanningSyscalls)


def test_a_propagation_change_is_not_a_new_mount(tmp_path):
    # mount(2) with only propagation flags (and no fstype) changes an existing
    # mount; MS_UNBINDABLE is one of them, as MS_PRIVATE/SLAVE/SHARED are.
    os.makedirs(tmp_path / "a")
    for flag in (MS.UNBINDABLE, MS.PRIVATE, MS.SLAVE, MS.SHARED):
        p = PlanningSyscalls(str(tmp_path))
        p.mount(None, str(tmp_path / "a"), None, flag | MS.REC)
        assert p._vmounts == [], hex(flag)
    p = PlanningSyscalls(str(tmp_path))
    p.mount("tmpfs", str(tmp_path / "a"), "tmpfs", 0)
    assert p._vmounts == [(str(tmp_path / "a"), "tmpfs", "tmpfs")]
