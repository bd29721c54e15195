"""The bounding-set drop of capabilities.apply without reading the set first:
a drop of an absent capability succeeds, and only a refused drop (no
CAP_SETPCAP) asks whether there was anything to drop."""

import errno

import pytest

from ketch.errors import ConfigError, SetupError
from ketch.linux import capabilities as caps

ALL = (1 << 41) - 1


class Libc:
    def __init__(self, bnd=ALL, inh=0, setpcap=True):
        self.bnd = bnd
        self.state = [0, ALL, inh]
        self.setpcap = setpcap
        self.reads = []
        self.drops = []

    def capget(self, pid=0):
        return tuple(self.state)

    def capset(self, e, p, i, pid=0):
        self.state = [e, p, i]

    def prctl(self, op, a2=0, a3=0, a4=0, a5=0):
        if op == caps.PR_CAPBSET_READ:
            self.reads.append(a2)
            return self.bnd >> a2 & 1
        if op == caps.PR_CAPBSET_DROP:
            if not self.setpcap:
                raise OSError(errno.EPERM, "Operation not permitted")
            self.drops.append(a2)
            self.bnd &= ~(1 << a2)
        return 0


@pytest.fixture
def libc(monkeypatch):
    def make(**kw):
        fake = Libc(**kw)
        monkeypatch.setattr(caps, "_libc", fake)
        monkeypatch.setattr(caps, "_last_cap", 40)
        return fake
    return make


def test_default_spec_reads_nothing_and_drops_the_rest(libc):
    fake = libc(bnd=ALL & ~(1 << 21))  # CAP_SYS_ADMIN already gone
    caps.apply({"bounding": ["CAP_KILL", "CAP_CHOWN"], "permitted": ["CAP_KILL"], "effective": ["CAP_KILL"]})
    assert fake.reads == []
    assert sorted(fake.drops) == [i for i in range(41) if i not in (0, 5)]
    assert fake.bnd == (1 << 0) | (1 << 5)


def test_inheritable_check_reads_only_the_new_inheritable_bits(libc):
    fake = libc(inh=1 << 5)
    caps.apply({"bounding": ["CAP_KILL", "CAP_CHOWN"], "permitted": ["CAP_KILL", "CAP_CHOWN"],
                "inheritable": ["CAP_KILL", "CAP_CHOWN"]})
    assert fake.reads == [0]


def test_inheritable_outside_the_current_bounding_set_is_refused_before_any_drop(libc):
    fake = libc(bnd=ALL & ~(1 << 5))
    with pytest.raises(ConfigError, match="inheritable capabilities CAP_KILL are not in the bounding set"):
        caps.apply({"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"]})
    assert fake.drops == []


def test_without_setpcap_nothing_to_drop_is_fine(libc):
    fake = libc(bnd=1 << 5, setpcap=False)
    caps.apply({"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"]})
    assert fake.reads == [i for i in range(41) if i != 5]


def test_without_setpcap_a_held_capability_cannot_be_dropped(libc):
    libc(bnd=(1 << 5) | (1 << 21), setpcap=False)
    with pytest.raises(SetupError, match="drop CAP_SYS_ADMIN from the bounding set: operation not permitted"):
        caps.apply({"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"]})
