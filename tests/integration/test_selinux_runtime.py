"""SELinux labels through real containers run by the ketch binary.

This kernel has no SELinux.  "As if enabled" (ketch run through the test
launcher support/selinux_ketch.py, with a directory holding an ``enforce``
file as its selinuxfs) makes ketch label for real: ``security.selinux``
xattrs are stored by ext4 and tmpfs even without an LSM, and the exec label
goes to a plain file (``exec_attr``) because the real /proc attr refuses
writes here.  What this kernel cannot show:

* ``context=`` mount data: every filesystem refuses it (EINVAL) without
  SELinux, so containers run with ``mount_context=False`` (the mount
  plan with context= is in tests/unit/test_selinux_wiring.py), except the
  mqueue test, which runs into that refusal on purpose;
* a stored label on devpts and mqueue inodes: without an LSM they refuse
  security.* xattrs (EOPNOTSUPP).  The console and mqueue tests trace the
  setxattr calls instead (strace) and check their label, target and order.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import KETCH, Runtime, wait_for
from support.selinux import FakeSelinux

MLABEL = "system_u:object_r:container_file_t:s0:c12,c345"
SHARED = "system_u:object_r:container_file_t:s0"
PLABEL = "system_u:system_r:container_t:s0:c12,c345"
XATTR = "security.selinux"
RUNC_OFF_MSG = "selinux label is specified in config, but selinux is disabled or not supported"

needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def xlabel(path, follow=True):
    try:
        return os.getxattr(path, XATTR, follow_symlinks=follow).rstrip(b"\0").decode()
    except OSError:
        return None


def tree_labels(top):
    """{relative path: label or None} for every entry of a tree, symlinks not followed."""
    out = {".": xlabel(top, False)}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, top)] = xlabel(p, False)
    return out


def make_tree(path):
    os.makedirs(os.path.join(path, "sub"))
    with open(os.path.join(path, "f"), "w") as f:
        f.write("content of " + os.path.basename(path) + "\n")
    with open(os.path.join(path, "sub", "g"), "w") as f:
        f.write("g\n")
    os.symlink("sub/g", os.path.join(path, "link"))
    return path


class AsIf(Runtime):
    """ketch (same --root as the `ketch` fixture) with SELinux as if enabled."""

    def __init__(self, root, fake):
        super().__init__(KETCH, root, "ketch (SELinux as if enabled)")
        self.fake = fake

    def cmd(self, *args, root=True):
        return [*self.fake.prefix(), *(["--root", self.root] if root else []), *args]


@pytest.fixture
def asif(ketch, tmp_path):
    fs = tmp_path / "selinuxfs"
    fs.mkdir()
    (fs / "enforce").write_text("1")
    return AsIf(ketch.root, FakeSelinux(fs, exec_attr=tmp_path / "attr_exec", mount_context=False))


@pytest.fixture
def off_env():
    return dict(os.environ)


def strace_cmd(out, argv):
    return ["strace", "-f", "-qq", "-s", "256", "-e", "trace=mount,setxattr,lsetxattr,fsetxattr",
            "-o", out, *argv]


def traced(out):
    with open(out) as f:
        # "pid syscall(args) = ret": drop the pid
        return [ln.split(None, 1)[1] for ln in f.read().splitlines() if " " in ln]


# ---- z / Z ------------------------------------------------------------------------------

def test_z_shares_and_Z_keeps_categories_on_bind_sources(ketch, bundle, tmp_path, asif, cid):
    shared = make_tree(str(tmp_path / "shared"))
    private = make_tree(str(tmp_path / "private"))
    other = make_tree(str(tmp_path / "plain"))
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.config["mounts"] += [
        {"destination": "/s", "type": "bind", "source": shared, "options": ["rbind", "z"]},
        {"destination": "/p", "type": "bind", "source": private, "options": ["rbind", "ro", "Z"]},
        {"destination": "/o", "type": "bind", "source": other, "options": ["rbind"]},
    ]
    bundle.sh("cat /s/f /p/f /p/link").write()
    p = asif("run", "-b", bundle.path, cid)
    assert p.stdout == "content of shared\ncontent of private\ng\n"
    s, pr = tree_labels(shared), tree_labels(private)
    assert set(s) == {".", "f", "sub", "sub/g", "link"}
    assert s == dict.fromkeys(s, SHARED)       # z: the categories dropped, every container may use it
    assert pr == dict.fromkeys(pr, MLABEL)     # Z: this container's categories only
    assert set(tree_labels(other).values()) == {None}  # no z/Z: untouched


def test_relabel_of_a_system_location_is_refused(ketch, bundle, tmp_path, asif, cid):
    assert xlabel("/srv") is None
    link = tmp_path / "innocent"
    os.symlink("/srv", link)  # the bind follows it: so does the check
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.config["mounts"].append({"destination": "/x", "type": "bind", "source": str(link),
                                    "options": ["rbind", "z"]})
    bundle.args("true").write()
    p = asif("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "relabel" in p.stderr and "/srv" in p.stderr and "system location" in p.stderr, p.stderr
    assert xlabel("/srv") is None
    assert ketch.ids() == []


# ---- the process label ---------------------------------------------------------------------

def test_exec_label_written_before_execve(ketch, bundle, tmp_path, asif, cid):
    bundle.config["process"]["selinuxLabel"] = PLABEL
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.args("echo", "ran").write()
    p = asif("run", "-b", bundle.path, cid)
    assert p.stdout == "ran\n"
    with open(asif.fake.exec_attr) as f:
        assert f.read() == PLABEL


def test_exec_process_label(ketch, bundle, tmp_path, asif, cid):
    bundle.args("sleep", "30").write()
    asif("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p = asif("exec", "--process-label", PLABEL, cid, "true", check=False)
        assert p.returncode == 0, p.stderr
        with open(asif.fake.exec_attr) as f:
            assert f.read() == PLABEL
    finally:
        ketch("delete", "--force", cid)


# ---- the console -------------------------------------------------------------------------------

def run_on_console(ketch, bundle, tmp_path, env, cid, trace=None, rt=None):
    """create with a console socket (under strace if `trace`), start, read the pty until the output;
    `rt` runs the create (default: `ketch`)."""
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    argv = (rt or ketch).cmd("create", "--console-socket", sock_path, "-b", bundle.path, cid)
    proc = subprocess.Popen(strace_cmd(trace, argv) if trace else argv, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got = b""
    try:
        srv.settimeout(30)
        conn, _ = srv.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        master = fds[0]
        assert wait_for(lambda: ketch.status(cid) == "created", timeout=30)
        ketch("start", cid)
        deadline = time.monotonic() + 10
        while b"on-the-pty" not in got and time.monotonic() < deadline:
            try:
                got += os.read(master, 4096)
            except OSError:
                break
        os.close(master)
        proc.wait(timeout=30)  # strace follows the init to its end
    finally:
        srv.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: ketch.status(cid) == "stopped")
    ketch("delete", "--force", cid)
    return got


@needs_strace
def test_console_pty_labeled_before_it_becomes_dev_console(ketch, bundle, tmp_path, asif, cid):
    bundle.process["terminal"] = True
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.sh("echo on-the-pty").write()
    out = str(tmp_path / "strace.out")
    assert b"on-the-pty" in run_on_console(ketch, bundle, tmp_path, None, cid, trace=out, rt=asif)
    calls = traced(out)
    # The pty is labeled and bound through one fd checked to be the pty
    # (CVE-2025-52565), never by its path.
    label_call = [i for i, c in enumerate(calls)
                  if c.startswith('setxattr("/proc/self/fd/') and '"security.selinux", "' + MLABEL in c]
    assert len(label_call) == 1, calls
    # devpts keeps no labels without an LSM: refused, and the container carries on
    assert calls[label_call[0]].endswith("EOPNOTSUPP (Operation not supported)")
    pty = calls[label_call[0]].split('"')[1]
    # The next mount binds that very fd on /dev/console.  (Its number may
    # name other handles later: each is closed after use, and finalize's
    # masked-path binds reuse the number.)
    after = [c for c in calls[label_call[0] + 1:] if c.startswith("mount(")]
    assert after and after[0].startswith(f'mount("{pty}", ') and "MS_BIND" in after[0], calls
    assert not [c for c in calls if c.startswith('mount("/dev/pts/')], calls


# ---- mqueue: context= refused, mounted plain, the mountpoint labeled ------------------------------

@needs_strace
def test_mqueue_context_refused_then_mountpoint_labeled(ketch, own_bundle, tmp_path, asif, cid):
    # context= goes into the mount data: the kernel refuses it
    rt = AsIf(asif.root, FakeSelinux(asif.fake.fsdir, exec_attr=asif.fake.exec_attr))
    own_bundle.config["linux"]["mountLabel"] = MLABEL
    # only mounts that take no context=, and mqueue: the fallback is what runs
    own_bundle.config["mounts"] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
    ]
    own_bundle.config["linux"]["maskedPaths"] = []
    own_bundle.sh("grep ' /dev/mqueue ' /proc/self/mountinfo").write()
    out = str(tmp_path / "strace.out")
    p = subprocess.run(strace_cmd(out, rt.cmd("run", "-b", own_bundle.path, cid)),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert " - mqueue mqueue " in p.stdout and "context" not in p.stdout
    calls = traced(out)
    mq = [i for i, c in enumerate(calls) if c.startswith('mount("mqueue", ')]
    assert len(mq) == 2, calls
    assert f'context=\\"{MLABEL}\\"' in calls[mq[0]] and calls[mq[0]].endswith("EINVAL (Invalid argument)")
    assert "context" not in calls[mq[1]] and calls[mq[1]].endswith("= 0")
    after = calls[mq[1] + 1]
    assert after.startswith("setxattr(") and f'"security.selinux", "{MLABEL}' in after, calls
    assert after.endswith("EOPNOTSUPP (Operation not supported)")  # mqueue keeps no labels here


# ---- SELinux off (this host): runc's behaviour, and nothing written -------------------------------

def test_process_label_refused_when_off_like_runc(ketch, runc, bundle, off_env, tmp_path, cid):
    bundle.config["process"]["selinuxLabel"] = PLABEL
    bundle.args("true").write()
    for rt in (runc, ketch):
        p = rt("run", "-b", bundle.path, cid, env=off_env, check=False)
        assert p.returncode != 0 and RUNC_OFF_MSG in p.stderr, (rt.name, p.stderr)
        assert rt.ids() == []


def test_exec_process_label_refused_when_off_like_runc(ketch, runc, bundle, off_env, cid):
    bundle.args("sleep", "30").write()
    for rt in (runc, ketch):
        rt("run", "-d", "-b", bundle.path, cid, env=off_env, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
        try:
            p = rt("exec", "--process-label", PLABEL, cid, "true", env=off_env, check=False)
            assert p.returncode != 0 and RUNC_OFF_MSG in p.stderr, (rt.name, p.stderr)
        finally:
            rt("delete", "--force", cid)


def test_mount_label_and_relabel_are_no_ops_when_off(ketch, bundle, tmp_path, off_env, cid):
    # runc passes context= to the kernel regardless and fails (EINVAL); ketch, like
    # crun and Docker's label package, leaves mounts and files alone.
    shared = make_tree(str(tmp_path / "shared"))
    private = make_tree(str(tmp_path / "private"))
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.config["mounts"] += [
        {"destination": "/s", "type": "bind", "source": shared, "options": ["rbind", "z"]},
        {"destination": "/p", "type": "bind", "source": private, "options": ["rbind", "Z"]},
    ]
    bundle.sh("cat /s/f /p/f; grep -c context= /proc/self/mountinfo").write()
    p = ketch("run", "-b", bundle.path, cid, env=off_env, check=False)
    assert p.stdout == "content of shared\ncontent of private\n0\n", p.stderr
    assert set(tree_labels(shared).values()) == {None}
    assert set(tree_labels(private).values()) == {None}


def test_mount_label_with_runc_for_comparison(runc, bundle, off_env, cid):
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.args("true").write()
    p = runc("run", "-b", bundle.path, cid, env=off_env, check=False)
    assert p.returncode != 0 and "invalid argument" in p.stderr and "context=" in p.stderr


@needs_strace
def test_nothing_labeled_anywhere_when_off(ketch, bundle, tmp_path, off_env, cid):
    shared = make_tree(str(tmp_path / "shared"))
    bundle.process["terminal"] = True
    bundle.config["process"].pop("selinuxLabel", None)
    bundle.config["linux"]["mountLabel"] = MLABEL
    bundle.config["mounts"].append({"destination": "/s", "type": "bind", "source": shared,
                                    "options": ["rbind", "Z"]})
    bundle.sh("cat /s/f; echo on-the-pty").write()
    out = str(tmp_path / "strace.out")
    got = run_on_console(ketch, bundle, tmp_path, off_env, cid, trace=out)
    assert b"content of shared" in got and b"on-the-pty" in got
    calls = traced(out)
    assert [c for c in calls if c.startswith('mount("mqueue", ')], calls  # the trace saw the init
    assert not [c for c in calls if "xattr(" in c], calls
    assert not [c for c in calls if "context=" in c], calls
    assert set(tree_labels(shared).values()) == {None}
