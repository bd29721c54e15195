"""CVE-2025-52565: /dev/console is the pty bound by its path, /dev/pts/N.

If /dev/pts/N is swapped (a racing container sharing the mount) for a
symlink to a procfs file, binding it by path puts that file, writable, on
/dev/console, and it becomes the container's stdio.  The slave is got from
the master itself (TIOCGPTPEER, no path), checked to be a pty (major
136-143) on a devpts filesystem, and bound from its fd.

The createContainer hook stands in for the racer: it puts a tmpfs over the
rootfs's /dev/pts whose ptmx leads to a real devpts instance mounted
elsewhere, and whose pty names are symlinks to a harmless procfs file (an
IPC-namespace sysctl of the container).  By path the console would be that
file; by fd it is the real pty.
"""

import os
import subprocess

from hostcheck import hook, out, sentinel  # noqa: F401  (sentinel: fixture)
from integration.conftest import wait_for
from integration.test_terminal import ConsoleSocket, _read_until


def _swap_pts(r):
    links = " ".join(f"ln -s /proc/sys/kernel/msgmnb {r}/dev/pts/{n};" for n in range(16))
    return (f"mkdir -p {r}/dev/pts2 && mount -t devpts -o newinstance,ptmxmode=0666 none {r}/dev/pts2 && "
            f"mount -t tmpfs none {r}/dev/pts && ln -s /dev/pts2/ptmx {r}/dev/pts/ptmx && {links} true")


def test_the_console_is_the_pty_whatever_dev_pts_holds(ketch, own_bundle, cid, tmp_path, sentinel):
    b = own_bundle
    b.process["terminal"] = True
    b.config["hooks"] = {"createContainer": [hook(_swap_pts(b.rootfs))]}
    b.sh("stat -L -c 'console %F %t' /dev/console; stat -L -c 'stdin %F %t' /proc/self/fd/0; "
         f"cat /proc/sys/kernel/msgmnb; cat {sentinel.path}; echo end").write()
    cs = ConsoleSocket(str(tmp_path / "console.sock"))
    try:
        p = ketch("create", "--console-socket", cs.path, "-b", b.path, cid, check=False)
        assert p.returncode == 0, p.stderr
        master, _ = cs.receive()
    finally:
        cs.close()
    try:
        ketch("start", cid)
        text = _read_until(master, b"end").decode(errors="replace")
    finally:
        os.close(master)
    wait_for(lambda: ketch.status(cid) == "stopped")
    ketch("delete", "--force", cid)
    assert "console character special file 88" in text, text  # 0x88 = 136, a pty
    assert "stdin character special file 88" in text, text
    assert "16384" in text  # the decoy sysctl was neither the console nor written
    sentinel.check(text, out(p))


def test_exec_tty_is_a_pty(ketch, bundle, cid, tmp_path, sentinel):
    bundle.sh("exec sleep 30 >/dev/null 2>&1").write()
    ketch("run", "-d", "--bundle", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cs = ConsoleSocket(str(tmp_path / "c.sock"))
    try:
        p = subprocess.Popen(ketch.cmd("exec", "-t", "-d", "--console-socket", cs.path, cid, "sh", "-c",
                                       f"stat -L -c 'tty %F %t' /proc/self/fd/0; cat {sentinel.path}; echo end"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        master, _ = cs.receive()
        p.communicate(timeout=30)
    finally:
        cs.close()
    try:
        text = _read_until(master, b"end").decode(errors="replace")
    finally:
        os.close(master)
        ketch("delete", "--force", cid, check=False)
    assert "tty character special file 88" in text, text
    sentinel.check(text)
