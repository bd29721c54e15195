"""CVE-2019-16884 (and its regression CVE-2023-27561): a /proc the container
made answers the runtime's /proc writes.

runc wrote the AppArmor profile of the container process to
/proc/self/attr/exec after the container's mounts; an image could have a
volume on /proc and get the write (the label) lost in a file of its own.
Here: a mount over /proc that is not procfs is refused, however the
destination is spelled; and every /proc write of the runtime (here
oom_score_adj) goes through a handle on the host's procfs, so an exec into a
container that mounted its own /proc still sets the real value and the
container's fake file is untouched.
"""

import json
import os
import subprocess

import pytest

from hostcheck import engine, out, sentinel  # noqa: F401  (fixtures)
from integration.conftest import KETCH, wait_for


@pytest.mark.parametrize("dest", ["/proc", "/proc/", "//proc/.", "/etc/../proc"])
def test_a_bind_mount_over_proc_that_is_not_procfs_is_refused(ketch, bundle, cid, tmp_path, sentinel, dest):
    fake = tmp_path / "fakeproc"
    (fake / "self" / "attr").mkdir(parents=True)
    (fake / "self" / "attr" / "exec").write_text("untouched")
    bundle.config["mounts"].append({"destination": dest, "type": "bind", "source": str(fake),
                                    "options": ["rbind"]})
    bundle.sh(f"cat {sentinel.path}; ls /proc/self/attr").write()
    p = ketch("run", "--bundle", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "the source is not a proc filesystem" in p.stderr
    assert p.stderr.count("\n") == 1, p.stderr  # one line
    assert ketch.ids() == []
    assert (fake / "self" / "attr" / "exec").read_text() == "untouched"
    sentinel.check(out(p))


def test_a_symlinked_destination_reaching_proc_is_refused(ketch, own_bundle, cid, tmp_path, sentinel):
    # CVE-2023-27561: the check came back only for the literal "/proc".
    os.symlink("proc", os.path.join(own_bundle.path, "rootfs", "volume"))
    own_bundle.config["mounts"].append({"destination": "/volume", "type": "bind", "source": str(tmp_path),
                                        "options": ["rbind"]})
    own_bundle.sh(f"cat {sentinel.path}").write()
    p = ketch("run", "--bundle", own_bundle.path, cid, check=False)
    assert p.returncode != 0 and "not a proc filesystem" in p.stderr
    assert ketch.ids() == []
    sentinel.check(out(p))


def test_exec_writes_oom_score_adj_through_the_hosts_procfs(ketch, bundle, cid, tmp_path, sentinel):
    caps = bundle.process["capabilities"]
    for k in ("bounding", "effective", "permitted"):
        caps[k] = sorted(set(caps[k]) | {"CAP_SYS_ADMIN"})
    # The container replaces its /proc with a tmpfs holding a fake self/oom_score_adj.
    bundle.sh("mount -t tmpfs none /proc && mkdir /proc/self && echo 0 > /proc/self/oom_score_adj "
              "&& touch /ready; exec sleep 60").write()
    ketch("run", "-d", "--bundle", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = bundle.rootfs
    try:
        assert wait_for(lambda: ketch("exec", cid, "test", "-e", "/ready", check=False).returncode == 0)
        proc = dict(bundle.process, args=["sh", "-c", f"cat {sentinel.path}; exec sleep 30 >/dev/null 2>&1"],
                    oomScoreAdj=345, terminal=False)
        pf = tmp_path / "process.json"
        pf.write_text(json.dumps(proc))
        pidfile = tmp_path / "exec.pid"
        e = ketch("exec", "-d", "--pid-file", str(pidfile), "--process", str(pf), cid, check=False)
        assert e.returncode == 0, e.stderr
        pid = int(pidfile.read_text())
        with open(f"/proc/{pid}/oom_score_adj") as f:
            assert int(f.read()) == 345  # the real value, seen from the host
        fake = ketch("exec", cid, "cat", "/proc/self/oom_score_adj")
        assert fake.stdout.strip() == "0"  # the container's fake file was not written
        sentinel.check(out(e), out(fake))
    finally:
        ketch("delete", "--force", cid, check=False)
    assert os.path.isdir(root)


def test_engine_volume_over_proc_is_refused(engine, tmp_path, sentinel):
    p = engine.cli(KETCH, "container", "run", "--rm", "-v", f"{tmp_path}:/proc", "bb", "cat", sentinel.path)
    assert p.returncode != 0 and "not a proc filesystem" in p.stderr
    assert engine.eng.containers.list(all=True) == []
    sentinel.check(out(p))
