import os

import pytest

from ketch.errors import ConfigError, SetupError
from ketch.linux import capabilities as caps

from forkutil import in_child


def status_caps():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                out[k] = int(v, 16)
    return out


def test_table_matches_kernel_numbers():
    assert len(caps.NAMES) == 41
    assert caps.BY_NAME["CAP_CHOWN"] == 0
    assert caps.BY_NAME["CAP_SYS_ADMIN"] == 21
    assert caps.BY_NAME["CAP_AUDIT_READ"] == 37
    assert caps.BY_NAME["CAP_CHECKPOINT_RESTORE"] == 40
    assert len(set(caps.NAMES)) == len(caps.NAMES)


def test_last_cap_is_the_kernels():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert caps.last_cap() == int(f.read())


def test_unknown_names_warn_and_are_skipped():
    warnings = []
    mask = caps.to_mask(["CAP_KILL", "CAP_FOO", "cap_chown"], warnings.append)
    assert mask == 1 << 5
    assert len(warnings) == 1
    assert "CAP_FOO" in warnings[0] and "cap_chown" in warnings[0]


def test_capability_past_kernel_last_cap_warns(monkeypatch):
    monkeypatch.setattr(caps, "_last_cap", 37)
    warnings = []
    assert caps.to_mask(["CAP_BPF", "CAP_AUDIT_READ"], warnings.append) == 1 << 37
    assert "CAP_BPF" in warnings[0]


@pytest.mark.parametrize("bad", ["", "CAP KILL", "CAP_KILL;", 5, None, "_CAP"])
def test_malformed_names_are_config_errors(bad):
    with pytest.raises(ConfigError, match="malformed capability name"):
        caps.to_mask([bad])


def test_parse_all_sets_and_unknown_set_warns():
    warnings = []
    p = caps.parse({"bounding": ["CAP_KILL", "CAP_CHOWN"], "ambient": ["CAP_KILL"], "bogus": []}, warnings.append)
    assert p == {"bounding": 0b100001, "effective": 0, "permitted": 0, "inheritable": 0, "ambient": 1 << 5}
    assert "bogus" in warnings[0]


class FakeLibc:
    """Records the syscalls apply() makes, with a full-capability starting state."""

    def __init__(self, prm=(1 << 41) - 1, inh=0, bnd=(1 << 41) - 1):
        self.calls = []
        self.state = [0, prm, inh]
        self.bnd = bnd

    def capget(self, pid=0):
        return tuple(self.state)

    def capset(self, e, p, i, pid=0):
        self.calls.append(("capset", e, p, i))
        self.state = [e, p, i]

    def prctl(self, op, a2=0, a3=0, a4=0, a5=0):
        if op == caps.PR_CAPBSET_READ:
            return self.bnd >> a2 & 1
        self.calls.append(("prctl", op, a2, a3))
        if op == caps.PR_CAPBSET_DROP:
            self.bnd &= ~(1 << a2)
        return 0


def test_apply_order_raise_effective_then_bounding_then_capset_then_ambient(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(caps, "_libc", fake)
    monkeypatch.setattr(caps, "_last_cap", 40)
    kill, chown = 1 << 5, 1 << 0
    caps.apply({"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL", "CAP_CHOWN"],
                "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]})
    kinds = [c[0] if c[0] == "capset" else c[1] for c in fake.calls]
    # effective raised to permitted before any bounding drop (PR_CAPBSET_DROP needs CAP_SETPCAP effective)
    assert fake.calls[0] == ("capset", (1 << 41) - 1, (1 << 41) - 1, 0)
    drops = [c[2] for c in fake.calls if c[0] == "prctl" and c[1] == caps.PR_CAPBSET_DROP]
    assert sorted(drops) == [i for i in range(41) if i not in (0, 5)]
    assert fake.bnd == kill | chown
    final = kinds.index("capset", 1)
    assert all(k == caps.PR_CAPBSET_DROP for k in kinds[1:final])
    assert fake.calls[final] == ("capset", kill, kill | chown, kill)
    assert fake.calls[final + 1:] == [("prctl", caps.PR_SET_KEEPCAPS, 0, 0),
                                      ("prctl", caps.PR_CAP_AMBIENT, caps.PR_CAP_AMBIENT_CLEAR_ALL, 0),
                                      ("prctl", caps.PR_CAP_AMBIENT, caps.PR_CAP_AMBIENT_RAISE, 5)]


def test_apply_refuses_effective_outside_permitted(monkeypatch):
    monkeypatch.setattr(caps, "_libc", FakeLibc())
    with pytest.raises(ConfigError, match="effective capabilities CAP_KILL are not in the permitted set"):
        caps.apply({"effective": ["CAP_KILL"], "permitted": []})


def test_ambient_not_permitted_and_inheritable_is_left_out_like_runc(monkeypatch):
    # runc 1.1.5 (checked on this machine): `runc spec`'s default lists ambient
    # capabilities with no inheritable set, and runs with CapAmb 0.
    fake = FakeLibc()
    monkeypatch.setattr(caps, "_libc", fake)
    caps.apply({"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]})
    raises = [c for c in fake.calls if c[:3] == ("prctl", caps.PR_CAP_AMBIENT, caps.PR_CAP_AMBIENT_RAISE)]
    assert raises == []


def test_apply_refuses_capability_the_runtime_lacks(monkeypatch):
    fake = FakeLibc(prm=((1 << 41) - 1) & ~(1 << 24))
    monkeypatch.setattr(caps, "_libc", fake)
    with pytest.raises(SetupError, match="CAP_SYS_RESOURCE not held by the runtime"):
        caps.apply({"permitted": ["CAP_SYS_RESOURCE"]})
    assert fake.calls == []  # nothing half-applied


def test_apply_refuses_inheritable_outside_bounding(monkeypatch):
    monkeypatch.setattr(caps, "_libc", FakeLibc())
    with pytest.raises(ConfigError, match="inheritable capabilities CAP_KILL are not in the bounding set"):
        caps.apply({"bounding": [], "inheritable": ["CAP_KILL"]})


def test_names_round_trip():
    assert caps.names((1 << 5) | (1 << 21)) == ["CAP_KILL", "CAP_SYS_ADMIN"]


def test_real_apply_in_child_without_uid_change():
    # Dropping capabilities needs none; works as root and as a user (where
    # asking only for a subset of what is held).
    def child():
        _, held, _ = caps._libc.capget()
        want = held & ((1 << 5) | (1 << 0))
        names = caps.names(want)
        caps.apply({"bounding": names, "effective": names, "permitted": names, "inheritable": [], "ambient": []})
        return want, status_caps()

    want, st = in_child(child)
    assert st["CapEff"] == want and st["CapPrm"] == want
    assert st["CapInh"] == 0 and st["CapAmb"] == 0
    if os.geteuid() == 0:
        assert st["CapBnd"] == want
