"""runtime/rootless.py decisions, without running anything (the integration
tests in tests/integration/test_rootless_runtime.py run them for real)."""

import os

import pytest

from ketch import errors
from ketch.runtime import rootless


def _config(uid_maps=None, gid_maps=None, user=True):
    ns = [{"type": "pid"}, {"type": "mount"}] + ([{"type": "user"}] if user else [])
    return {"ociVersion": "1.0.2", "linux": {"namespaces": ns,
            "uidMappings": uid_maps if uid_maps is not None else [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": gid_maps if gid_maps is not None else [{"containerID": 0, "hostID": 1000, "size": 1}]}}


@pytest.fixture
def caller(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "getgid", lambda: 1000)
    monkeypatch.setattr(rootless, "_user_names", lambda: ["alice", "1000"])
    sub = tmp_path / "subid"
    sub.write_text("bob:100000:65536\nalice:200000:65536\n")
    monkeypatch.setattr(rootless, "SUBUID", str(sub))
    monkeypatch.setattr(rootless, "SUBGID", str(sub))
    return sub


def test_user_namespace_required(caller):
    with pytest.raises(errors.ConfigError, match="rootless container requires user namespaces"):
        rootless.check_config(_config(user=False))


def test_own_id_is_written_directly_with_setgroups_denied(caller):
    plan = rootless.check_config(_config())
    assert plan.uid_helper is None and plan.gid_helper is None
    assert plan.setgroups_denied


def test_ranges_need_newuidmap_and_a_subuid_range(caller, monkeypatch):
    monkeypatch.setattr(rootless, "_which", lambda name: f"/usr/bin/{name}")
    maps = [{"containerID": 0, "hostID": 1000, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 65536}]
    plan = rootless.check_config(_config(maps, maps))
    assert plan.uid_helper == "/usr/bin/newuidmap" and plan.gid_helper == "/usr/bin/newgidmap"
    assert not plan.setgroups_denied
    other = [{"containerID": 0, "hostID": 100000, "size": 10}]
    with pytest.raises(errors.ConfigError, match=r"100000-100009 are not in your .* range \(200000-265535\)"):
        rootless.check_config(_config(other, maps))


def test_missing_newuidmap_says_install_uidmap(caller, monkeypatch):
    monkeypatch.setattr(rootless, "_which", lambda name: None)
    maps = [{"containerID": 0, "hostID": 200000, "size": 100}]
    with pytest.raises(errors.ConfigError, match="needs newuidmap \\(install the uidmap package\\)"):
        rootless.check_config(_config(maps, maps))


def test_state_root(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert rootless.state_root() == "/run/user/1000/ketch"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    with pytest.raises(errors.KetchError, match="XDG_RUNTIME_DIR is not set.*--root"):
        rootless.state_root()


def test_limits_set_ignores_devices_and_empty_values():
    assert rootless.limits_set({"devices": [{"allow": False, "access": "rwm"}]}) == []
    assert rootless.limits_set({"memory": {}, "cpu": {"shares": 0}, "pids": {"limit": 0}}) == []
    assert rootless.limits_set({"memory": {"limit": 1 << 20}, "pids": {"limit": 5}}) == \
        ["memory.limit", "pids.limit"]


def test_default_root(monkeypatch):
    from ketch import RUN_DIR
    from ketch.linux import namespaces

    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert rootless.default_root() == "/run/user/1000/ketch"
    # Root: /run/ketch on the host whatever its environment says; the user's
    # dir when root only in a user namespace (rootless podman's runtime).
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(namespaces, "in_user_namespace", lambda: False)
    assert rootless.default_root() == RUN_DIR
    monkeypatch.setattr(namespaces, "in_user_namespace", lambda: True)
    assert rootless.default_root() == "/run/user/1000/ketch"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert rootless.default_root() == RUN_DIR
