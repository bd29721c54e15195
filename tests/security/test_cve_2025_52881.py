"""CVE-2025-52881: the runtime's /proc writes redirected by a procfs file
mounted over the one it means to write.

A container sharing mounts with another (or an image racing the runtime) can
bind one procfs file over another: /proc/self/attr/exec over
/proc/sys/kernel/core_pattern, and the runtime's label write lands in a
host-wide kernel setting.  An fstatfs check on the opened file does not see
it (both are procfs).  Here the overmounts are made by a createContainer
hook (it runs in the container's mount namespace, before pivot_root, as
host root: it stands in for the racing container), onto files the init
writes: oom_score_adj and a sysctl.  The targets are IPC-namespace sysctls
of the container itself, so a failing runtime changes nothing on the host;
the runtime must write the real files and leave the decoys untouched.
(exec's writes are covered by test_cve_2019_16884: the exec'd process's pid
is not known in advance, so only a whole fake /proc can be put in its way.)
"""

import subprocess

from hostcheck import hook, out, sentinel  # noqa: F401  (sentinel: fixture)


def _nsenter_ipc(pid, path):
    p = subprocess.run(["nsenter", "-t", str(pid), "-i", "cat", path], capture_output=True, text=True, check=True)
    return p.stdout.strip()


def test_overmounted_proc_files_are_not_written_through(ketch, own_bundle, cid, tmp_path, sentinel):
    b = own_bundle
    root = b.rootfs
    b.process["oomScoreAdj"] = 222
    b.config["linux"]["sysctl"] = {"kernel.msgmax": "4242"}
    b.config["hooks"] = {"createContainer": [hook(
        f"mount --bind {root}/proc/sys/kernel/msgmnb {root}/proc/1/oom_score_adj && "
        f"mount --bind {root}/proc/sys/kernel/msgmnb {root}/proc/sys/kernel/msgmax")]}
    b.sh(f"cat {sentinel.path}; exec sleep 60 >/dev/null 2>&1").write()
    err = tmp_path / "create.err"
    with open(err, "w") as f:  # the init keeps the stdio it was given: no pipe to wait on
        p = ketch("create", "--bundle", b.path, cid, stdout=subprocess.DEVNULL, stderr=f, check=False)
    assert p.returncode == 0, err.read_text()
    try:
        pid = ketch.state(cid)["pid"]
        with open(f"/proc/{pid}/oom_score_adj") as f:
            assert int(f.read()) == 222
        assert _nsenter_ipc(pid, "/proc/sys/kernel/msgmax") == "4242"
        assert _nsenter_ipc(pid, "/proc/sys/kernel/msgmnb") == "16384"  # the decoy: never written
        ketch("start", cid)
    finally:
        ketch("delete", "--force", cid, check=False)
    sentinel.check(err.read_text())

