import os

import pytest

from ketch.errors import ConfigError
from ketch.linux import sysctl

ALL = [{"type": t} for t in ("ipc", "network", "uts", "mount", "pid")]


@pytest.mark.parametrize("key", ["kernel.msgmax", "kernel.sem", "kernel.shmmax", "kernel.shm_rmid_forced",
                                 "fs.mqueue.msg_max", "net.ipv4.ip_forward", "net/ipv4/conf/eth0.100/forwarding",
                                 "kernel.domainname"])
def test_namespaced_keys_accepted(key):
    sysctl.validate({key: "1"}, ALL)


@pytest.mark.parametrize("key, ns, msg", [
    ("kernel.shmmax", ["network", "uts"], "not allowed in the host's ipc namespace"),
    ("fs.mqueue.msg_max", [], "not allowed in the host's ipc namespace"),
    ("net.ipv4.ip_forward", ["ipc"], "not allowed in the host's network namespace"),
    ("kernel.domainname", ["ipc"], "not in a separate kernel namespace"),
    ("kernel.hostname", ["uts", "ipc"], "conflicts with the OCI \"hostname\" field"),
    ("vm.swappiness", ["ipc", "network", "uts"], "'vm.swappiness' is not in a separate kernel namespace"),
    ("kernel.pid_max", ["ipc", "network", "uts", "pid"], "not in a separate kernel namespace"),
])
def test_refused_keys_name_the_key(key, ns, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")) as ei:
        sysctl.validate({key: "1"}, [{"type": t} for t in ns])
    assert key in str(ei.value)


@pytest.mark.parametrize("key", ["net.ipv4..x", "net/../../etc/passwd", "net.", "", "net/ipv4/\0"])
def test_keys_that_could_escape_proc_sys_are_refused(key):
    with pytest.raises(ConfigError):
        sysctl.validate({key: "1"}, ALL)


def test_netns_path_of_the_host_is_refused():
    with pytest.raises(ConfigError, match="is the host's"):
        sysctl.validate({"net.ipv4.ip_forward": "1"}, [{"type": "network", "path": "/proc/self/ns/net"}])


def test_mapping_form_of_namespaces():
    sysctl.validate({"kernel.sem": "1 2 3 4"}, {"ipc": "", "mount": ""})
    with pytest.raises(ConfigError):
        sysctl.validate({"kernel.sem": "1 2 3 4"}, {"mount": ""})


def test_value_must_be_a_string():
    with pytest.raises(ConfigError, match="value must be a string"):
        sysctl.validate({"kernel.sem": 5}, ALL)


def test_apply_writes_dotted_and_slashed_keys(tmp_path):
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "shmmax").write_text("0")
    (tmp_path / "net" / "ipv4" / "conf" / "eth0.100").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "conf" / "eth0.100" / "forwarding").write_text("0")
    sysctl.apply({"kernel.shmmax": "4096", "net/ipv4/conf/eth0.100/forwarding": "1"}, proc_sys=str(tmp_path))
    assert (tmp_path / "kernel" / "shmmax").read_text() == "4096"
    assert (tmp_path / "net" / "ipv4" / "conf" / "eth0.100" / "forwarding").read_text() == "1"


def test_apply_validates_first_when_given_namespaces(tmp_path):
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "swappiness").write_text("60")
    with pytest.raises(ConfigError):
        sysctl.apply({"vm.swappiness": "1"}, {"ipc": ""}, proc_sys=str(tmp_path))
    assert (tmp_path / "vm" / "swappiness").read_text() == "60"


def test_apply_error_names_key_and_path(tmp_path):
    with pytest.raises(Exception, match=r"write sysctl kernel.sem='1' to .*/kernel/sem: no such file"):
        sysctl.apply({"kernel.sem": "1"}, proc_sys=str(tmp_path))


def test_apply_does_not_follow_a_symlink(tmp_path):
    target = tmp_path / "target"
    target.write_text("x")
    (tmp_path / "kernel").mkdir()
    os.symlink(target, tmp_path / "kernel" / "sem")
    with pytest.raises(Exception, match="kernel.sem"):
        sysctl.apply({"kernel.sem": "1"}, proc_sys=str(tmp_path))
    assert target.read_text() == "x"
