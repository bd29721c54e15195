"""Regression tests for the smaller runtime findings of issue 12 (item 7):
--pid-file's temporary file, --log's text format, deeply nested JSON,
and `delete` of a container without a mount namespace whose root is "/".
"""

import json
import os
import shlex
import subprocess

import pytest


def test_pid_file_temp_name_is_not_followed(ketch, bundle, cid, tmp_path):
    """A symlink planted at the temporary name (.<name>.<pid>) is refused,
    never followed: the file it points to stays as it was."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    piddir = tmp_path / "pids"
    piddir.mkdir()
    bundle.args("true")
    # The temporary name holds ketch's pid: plant the link from a shell that
    # then becomes ketch (exec keeps the pid).
    cmd = shlex.join(ketch.cmd("create", "--pid-file", str(piddir / "pid"), "-b", bundle.write(), cid))
    p = subprocess.run(["sh", "-c", f"ln -s {shlex.quote(str(victim))} {shlex.quote(str(piddir))}/.pid.$$; "
                                    f"exec {cmd}"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=60)
    assert p.returncode != 0, p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and "exists" in p.stderr, p.stderr
    assert victim.read_text() == "precious\n"
    assert not (piddir / "pid").exists()
    assert cid not in ketch.ids()


def test_pid_file_written(ketch, bundle, cid, tmp_path):
    bundle.args("true")
    ketch("create", "--pid-file", str(tmp_path / "pid"), "-b", bundle.write(), cid,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert int((tmp_path / "pid").read_text()) == ketch.state(cid)["pid"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".pid")] == []
    ketch("delete", "--force", cid)


def test_text_log_escapes_newlines(ketch, tmp_path, cid):
    log = tmp_path / "log"
    bad = str(tmp_path / 'nope\nlevel=fatal msg="forged"')
    p = ketch("--log", str(log), "--log-format", "text", "create", "-b", bad, cid, check=False)
    assert p.returncode != 0
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith('time="') and " level=error msg=" in lines[0]
    assert "level=fatal" in lines[0] and '\\nlevel=fatal msg=\\"forged\\"' in lines[0]


@pytest.mark.parametrize("depth", [100000, 990, 65])
def test_deeply_nested_config_is_one_error_line(ketch, bundle, cid, depth):
    bundle.args("true")
    path = bundle.write()
    with open(os.path.join(path, "config.json")) as f:
        text = f.read().rstrip().rstrip("}")
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(text + ', "annotations": {"x": ' + "[" * depth + "]" * depth + "}}")
    p = ketch("run", "-b", path, cid, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and "RecursionError" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "nested" in p.stderr and "config.json" in p.stderr
    assert cid not in ketch.ids()


def test_deeply_nested_exec_process_file(ketch, bundle, cid, tmp_path):
    bundle.args("sleep", "1000")
    ketch("run", "-d", "-b", bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = tmp_path / "process.json"
    proc.write_text('{"args": ["true"], "cwd": "/", "x": ' + "[" * 5000 + "]" * 5000 + "}")
    p = ketch("exec", "--process", str(proc), cid, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    ketch("delete", "--force", cid)


def test_delete_without_mount_namespace_on_host_root_keeps_host_mounts(ketch, bundle, cid):
    """root.path "/" and no mount namespace: the container's rootfs is the
    host's; `delete` must not detach the host's mounts under it.  Run in a
    private copy of the mount namespace (unshare -m), so a regression cannot
    take the real host's mounts away, and compare its mount table."""
    bundle.args("true")
    bundle.config["root"] = {"path": "/", "readonly": False}
    # /dev bound from the host's: no device node is made in the host's /dev.
    bundle.config["mounts"] = [{"destination": "/dev", "type": "bind", "source": "/dev",
                                "options": ["rbind"]}]
    linux = bundle.config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] not in ("mount", "cgroup")]
    linux["maskedPaths"] = []
    linux["readonlyPaths"] = []
    run = shlex.join(ketch.cmd("run", "--keep", "-b", bundle.write(), cid))
    delete = shlex.join(ketch.cmd("delete", cid))
    # The host's own mounts ("/", /proc, /sys, /dev...), not the scratch
    # mounts other programs make and remove under /tmp and /run meanwhile.
    table = "cut -d' ' -f5 /proc/self/mountinfo | grep -v -e '^/tmp/' -e '^/run/' | sort -u"
    script = (f"{table} > /tmp/.m1.$$; {run} && {delete}; rc=$?; {table} > /tmp/.m2.$$; "
              "echo rc=$rc; comm -23 /tmp/.m1.$$ /tmp/.m2.$$; rm -f /tmp/.m1.$$ /tmp/.m2.$$")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    lines = p.stdout.split()
    assert lines[:1] == ["rc=0"], p.stdout + p.stderr
    assert lines[1:] == [], f"host mounts gone after delete: {lines[1:]}"


def test_delete_without_mount_namespace_undoes_only_its_own_mounts(ketch, own_bundle, cid, tmp_path):
    """A mount under the rootfs made before the container is not its to undo;
    the container's own (a tmpfs from config.json) is."""
    pre = os.path.join(own_bundle.rootfs, "premounted")
    os.mkdir(pre)
    subprocess.run(["mount", "-t", "tmpfs", "pre", pre], check=True)
    try:
        own_bundle.args("true")
        own_bundle.config["mounts"] = [{"destination": "/proc", "type": "proc", "source": "proc"},
                                       {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]
        linux = own_bundle.config["linux"]
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] not in ("mount", "cgroup")]
        linux["maskedPaths"] = []
        linux["readonlyPaths"] = []
        ketch("run", "--keep", "-b", own_bundle.write(), cid)
        tmp_mp = os.path.join(own_bundle.rootfs, "tmp")
        assert os.path.ismount(tmp_mp)
        ketch("delete", cid)
        assert os.path.ismount(pre)
        assert not os.path.ismount(tmp_mp)
    finally:
        subprocess.run(["umount", "-l", pre], check=False)
    assert json.dumps(ketch.ids()) == "[]"
