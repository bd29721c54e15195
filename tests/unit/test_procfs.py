"""procfs.ProcFS: the one way the runtime writes under /proc (CVE-2019-16884, CVE-2025-52881)."""

import errno
import os
import subprocess

import pytest

from ketch.linux import procfs

from forkutil import in_child


def test_opens_self_and_writes_through_the_handle():
    def child():
        with procfs.ProcFS() as p:
            p.write("self/oom_score_adj", "321")
            fd = p.open("thread-self/comm", os.O_RDONLY)
            try:
                comm = os.read(fd, 64)
            finally:
                os.close(fd)
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read()), comm

    got, comm = in_child(child)
    assert got == 321 and comm


def test_self_is_read_through_the_handle():
    with procfs.ProcFS() as p:
        assert p.resolve("self/status") == f"{os.getpid()}/status"
        assert p.resolve("thread-self/attr/exec") == f"{os.getpid()}/task/{os.getpid()}/attr/exec"
        assert p.resolve("sys/kernel/msgmax") == "sys/kernel/msgmax"


def test_a_directory_that_is_not_procfs_is_refused(tmp_path):
    with pytest.raises(procfs.NotProcfs) as ei:
        procfs.ProcFS(str(tmp_path))
    assert "is not on procfs" in str(ei.value)


def test_a_subdirectory_of_procfs_is_not_a_procfs_root():
    # a bind of /proc/sys onto /proc would pass the magic check alone
    with pytest.raises(procfs.NotProcfs):
        procfs.ProcFS("/proc/sys")


def test_a_symlinked_proc_is_refused(tmp_path):
    (tmp_path / "proc").symlink_to("/proc")
    with pytest.raises(OSError) as ei:
        procfs.ProcFS(str(tmp_path / "proc"))
    assert ei.value.errno in (errno.ELOOP, errno.ENOTDIR)


@pytest.mark.parametrize("rel", ["self/fd/0", "self/cwd/x", "self/root/etc/passwd", "self/exe", "../etc/passwd"])
def test_links_and_escapes_are_refused(rel):
    with procfs.ProcFS() as p:
        with pytest.raises(OSError) as ei:
            p.open(rel, os.O_RDONLY)
    assert ei.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_an_overmounted_file_is_refused():
    # CVE-2025-52881: one procfs file bound over another passes any fstatfs
    # check; the handle refuses to cross the mount.
    script = r"""
import os, subprocess, sys
from ketch.linux import procfs
pid = os.getpid()
subprocess.run(["mount", "--bind", "/proc/sys/kernel/msgmnb", f"/proc/{pid}/oom_score_adj"], check=True)
with procfs.ProcFS() as p:
    try:
        p.write("self/oom_score_adj", "5")
    except OSError as e:
        print("refused", e.errno, e)
    else:
        print("written")
"""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", os.sys.executable, "-c", script],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(os.sys.path)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"refused {errno.EXDEV}"), p.stdout
    assert "something is mounted over it" in p.stdout


def test_a_handle_whose_fd_was_closed_under_it_fails():
    p = procfs.ProcFS()
    os.close(p.fd)
    other = os.open("/", os.O_RDONLY)  # likely the same number
    try:
        with pytest.raises(OSError) as ei:
            p.open("self/oom_score_adj", os.O_RDONLY)
        assert ei.value.errno == errno.EBADF
    finally:
        os.close(other)
