"""The engine run by an unprivileged user (tests/rootless.py's user, through setpriv):
storage under its XDG data dir with layer files owned by its mapped ids, import and pull,
containers through the runtime's rootless mode, slirp4netns/pasta networking with -p, and
nothing left behind (processes, mounts, the network helpers) once root cleans up.

Checked from the host as root: owners, modes, xattrs and whiteouts of the layer files,
the processes and mounts of the user."""

import io
import json
import os
import socket
import stat
import subprocess
import tarfile
import time

import pytest

from conftest import KETCH, wait_for

DRIVERS = ["overlay", "fuse-overlayfs", "vfs"]
OPAQUE_XATTR = {"overlay": "user.overlay.opaque", "fuse-overlayfs": "user.fuseoverlayfs.opaque"}


def entry(name, type=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.uid, t.gid, t.mtime = type, mode, uid, gid, 1_600_000_000
    t.size = len(data) if type == tarfile.REGTYPE else 0
    return t, (io.BytesIO(data) if type == tarfile.REGTYPE else None)


def tar_bytes(*entries, base=None):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        if base:
            with tarfile.open(base) as src:
                for m in src.getmembers():
                    t.addfile(m, src.extractfile(m) if m.isfile() else None)
        for ti, data in entries:
            t.addfile(ti, data)
    return b.getvalue()


def docker_archive(path, layers, tag):
    """`docker save` of an image whose layers are the given tars."""
    import hashlib
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cid = hashlib.sha256(cfg).hexdigest()
    files = {f"{cid}.json": cfg}
    for i, x in enumerate(layers):
        files[f"l{i}/layer.tar"] = x
    files["manifest.json"] = json.dumps([{"Config": f"{cid}.json", "RepoTags": [tag],
                                          "Layers": [f"l{i}/layer.tar" for i in range(len(layers))]}]).encode()
    with tarfile.open(path, "w") as t:
        for n, data in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    os.chmod(path, 0o644)


class Eng:
    """`ketch` as the test user, with its own XDG data dir (a scratch dir of the user)."""

    def __init__(self, user, data, driver=None):
        self.user, self.data, self.driver = user, data, driver

    def env(self, **kw):
        return self.user.env(XDG_DATA_HOME=self.data, **kw)

    def argv(self, *args):
        group = args[0]
        extra = ["--storage-driver", self.driver] if self.driver and group == "image" else []
        return [KETCH, *args[:2], *extra, *args[2:]]

    def __call__(self, *args, check=True, timeout=120, env=None, input=None):
        p = self.user.run(self.argv(*args), env=env or self.env(), timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"ketch {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    @property
    def store(self):
        return os.path.join(self.data, "ketch")


@pytest.fixture(scope="module")
def busybox_tar():
    """A busybox rootfs tar the test user can read (pytest's temp dirs are root's, 0700)."""
    import shutil
    import tempfile
    from ketch import busybox
    d = tempfile.mkdtemp(prefix="ketch-rl-busybox-")
    os.chmod(d, 0o755)
    busybox.make_rootfs(os.path.join(d, "rootfs"))
    out = os.path.join(d, "busybox.tar")
    subprocess.run(["tar", "-C", os.path.join(d, "rootfs"), "-cf", out, "."], check=True)
    os.chmod(out, 0o644)
    yield out
    shutil.rmtree(d)


@pytest.fixture
def ru(rootless_user):
    yield rootless_user
    # A `run --rm` returns before its monitor has unmounted and removed the layer: give it time.
    wait_for(lambda: not rootless_user.processes() and not rootless_user.mounts(), timeout=15)
    leftover = rootless_user.processes(), rootless_user.mounts()
    rootless_user.cleanup()
    assert leftover == ([], []), f"the rootless engine left processes/mounts: {leftover}"


@pytest.fixture(params=DRIVERS)
def eng(request, ru, busybox_tar):
    e = Eng(ru, ru.mkdtemp("xdg"), request.param)
    e("image", "import", busybox_tar, "busybox")
    return e


def host_ids(user, cuid):
    """The host id of container id `cuid` under the engine's maps."""
    return user.uid if cuid == 0 else user.subuid[0] + cuid - 1


def layer_dirs(e):
    """The layer directories of the store (diff dirs for overlay)."""
    drv = open(os.path.join(e.store, "storage-driver")).read().strip()
    home = os.path.join(e.store, drv)
    if drv == "vfs":
        return [os.path.join(home, "dir", n) for n in os.listdir(os.path.join(home, "dir"))]
    return [os.path.join(home, n, "diff") for n in os.listdir(home) if n != "l"]


# -- storage ----------------------------------------------------------------------------

def test_info_storage_under_xdg_and_driver_choice(ru, busybox_tar):
    data = ru.mkdtemp("xdg")
    e = Eng(ru, data)
    info = dict(line.split(": ", 1) for line in e("image", "info").stdout.splitlines() if ": " in line)
    assert info["Storage Root"] == os.path.join(data, "ketch")
    assert info["Runtime Root"] == os.path.join(ru.runtime_dir, "ketch")
    assert info["Storage Driver"] == "overlay"  # this kernel (>= 5.11) mounts overlay in a user namespace
    assert info["Rootless"] == "true" and info["UID Map"] == f"0:{ru.uid}:1 1:{ru.subuid[0]}:{ru.subuid[1]}"
    assert info["Network"] == "slirp4netns"
    # Without XDG_DATA_HOME: ~/.local/share/ketch
    p = e("image", "info", env=ru.env())
    assert f"Storage Root: {ru.home}/.local/share/ketch\n" in p.stdout
    subprocess.run(["rm", "-rf", f"{ru.home}/.local/share/ketch"], check=True)
    # The override, and the store keeps the driver it was made with.
    e2 = Eng(ru, ru.mkdtemp("xdg"), "vfs")
    e2("image", "import", busybox_tar, "busybox")
    assert "Storage Driver: vfs\n" in e2("image", "info").stdout
    p = Eng(ru, e2.data, "overlay")("image", "info", check=False)
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "holds vfs layers" in p.stderr


def test_unusable_places_are_one_line_errors(ru):
    e = Eng(ru, ru.mkdtemp("xdg"))
    p = e("image", "ls", check=False, env=e.env(XDG_RUNTIME_DIR=None))
    assert p.returncode != 0 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert "XDG_RUNTIME_DIR is not set" in p.stderr
    # no HOME: the passwd entry's home, as a login would set it
    p = e("image", "info", env=ru.env(HOME=None))
    assert f"Storage Root: {ru.home}/.local/share/ketch\n" in p.stdout
    subprocess.run(["rm", "-rf", f"{ru.home}/.local/share/ketch"], check=True)
    p = e("image", "ls", check=False, env=ru.env(XDG_DATA_HOME="/var/lib"))
    assert p.returncode != 0 and p.stderr.count("\n") == 1
    assert "cannot use /var/lib/ketch as the storage root: Permission denied" in p.stderr, p.stderr
    assert not os.path.exists("/var/lib/ketch") or os.stat("/var/lib/ketch").st_uid == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_import_owns_files_by_mapped_ids_whiteouts_in_the_userns(ru, busybox_tar, driver):
    e = Eng(ru, ru.mkdtemp("xdg"), driver)
    base = tar_bytes(entry("home/u", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
                     entry("home/u/secret", data=b"s3cret\n", mode=0o600, uid=1000, gid=1000),
                     entry("home/nobody", tarfile.DIRTYPE, mode=0o755, uid=65534, gid=65534),
                     entry("bin/su-like", data=b"x", mode=0o4755),
                     entry("opq/old", data=b"old"), entry("gone", data=b"bye"),
                     base=busybox_tar)
    top = tar_bytes(entry(".wh.gone"), entry("opq", tarfile.DIRTYPE, mode=0o755),
                    entry("opq/.wh..wh..opq"), entry("opq/new", data=b"new", uid=33, gid=33))
    arc = os.path.join(e.data, "img.tar")
    docker_archive(arc, [base, top], "owned:1")
    e("image", "load", "-i", arc)
    dirs = layer_dirs(e)
    assert len(dirs) == 2
    by_content = {os.path.lexists(os.path.join(d, "opq/old")): d for d in dirs}
    low = by_content[True]
    st = os.stat(os.path.join(low, "home/u/secret"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (host_ids(ru, 1000), host_ids(ru, 1000), 0o600)
    assert os.stat(os.path.join(low, "home/nobody")).st_uid == host_ids(ru, 65534)
    st = os.stat(os.path.join(low, "bin/su-like"))
    assert st.st_uid == ru.uid and stat.S_IMODE(st.st_mode) == 0o4755  # setuid kept, owner the user
    assert os.stat(low).st_uid == ru.uid
    # The user cannot read the 0600 file of a sub-id: the engine did it in the user namespace.
    p = ru.run(["cat", os.path.join(low, "home/u/secret")])
    assert p.returncode != 0 and "Permission denied" in p.stderr
    if driver != "vfs":
        up = by_content[False]
        wh = os.lstat(os.path.join(up, "gone"))
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0 and wh.st_uid == ru.uid
        assert os.getxattr(os.path.join(up, "opq"), OPAQUE_XATTR[driver]) == b"y"
        assert "trusted.overlay.opaque" not in os.listxattr(os.path.join(up, "opq"))
        assert os.stat(os.path.join(up, "opq/new")).st_uid == host_ids(ru, 33)
    else:
        full = by_content[False]
        assert not os.path.lexists(os.path.join(full, "gone"))
        assert sorted(os.listdir(os.path.join(full, "opq"))) == ["new"]
        assert os.stat(os.path.join(full, "opq/new")).st_uid == host_ids(ru, 33)
    # rm as the user removes every file of every id
    e("image", "rm", "owned:1")
    assert not any(os.path.exists(d) for d in dirs)


# -- containers (through the runtime's rootless mode) --------------------------------------

def test_run_exec_logs_stop_commit_rm(eng):
    ru = eng.user
    p = eng("container", "run", "--rm", "--network", "none", "busybox", "sh", "-c",
            "echo out; echo err >&2; cat /proc/self/uid_map; exit 3", check=False)
    assert p.returncode == 3 and p.stdout.splitlines()[0] == "out" and "err\n" in p.stderr
    assert p.stdout.split()[1:7] == ["0", str(ru.uid), "1", "1", str(ru.subuid[0]), str(ru.subuid[1])]
    cid = eng("container", "run", "-d", "--name", "c1", "--network", "none", "busybox", "sh", "-c",
              "mkdir /data; chown 1000:1000 /data; echo started; exec sleep 1000").stdout.strip()
    assert wait_for(lambda: "started" in eng("container", "logs", "c1").stdout)
    assert eng("container", "exec", "-u", "1000:1000", "c1", "sh", "-c",
               "echo mine > /data/f; id -u; stat -c %u /data/f").stdout.split() == ["1000", "1000"]
    # From the host: the file the container's uid 1000 wrote belongs to the mapped host id.
    drv = open(os.path.join(eng.store, "storage-driver")).read().strip()
    layer = os.path.join(eng.store, drv, cid, "diff") if drv != "vfs" else \
        os.path.join(eng.store, "vfs", "dir", cid)
    st = os.stat(os.path.join(layer, "data", "f"))
    assert (st.st_uid, st.st_gid) == (host_ids(ru, 1000), host_ids(ru, 1000))
    assert os.stat(layer).st_uid == ru.uid
    ls = eng("container", "ls").stdout
    assert "c1" in ls and "Up" in ls
    t = time.monotonic()
    eng("container", "stop", "-t", "1", "c1")
    assert time.monotonic() - t < 10
    insp = json.loads(eng("container", "inspect", "c1").stdout)[0]
    assert insp["State"]["Status"] == "exited" and insp["State"]["ExitCode"] == 137
    assert [p for p in ru.processes() if _cmd(p).startswith("sleep")] == []
    image_id = eng("container", "commit", "c1", "committed:1").stdout.strip()
    assert image_id.startswith("sha256:")
    out = eng("container", "run", "--rm", "--network", "none", "committed:1", "sh", "-c",
              "stat -c '%u:%g %n' /data /data/f; cat /data/f").stdout
    assert out == "1000:1000 /data\n1000:1000 /data/f\nmine\n"
    eng("container", "rm", "c1")
    assert not os.path.exists(layer)
    assert "c1" not in eng("container", "ls", "-a").stdout
    eng("image", "rm", "committed:1")


def _cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path="/index.html"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data.decode(errors="replace")
            data += chunk


@pytest.mark.parametrize("tool", ["slirp4netns", "pasta"])
def test_publish_to_loopback(ru, busybox_tar, tool):
    e = Eng(ru, ru.mkdtemp("xdg"))
    e("image", "import", busybox_tar, "busybox")
    port = _free_port()
    e("container", "run", "-d", "--name", "web", "--network", tool, "-p", f"127.0.0.1:{port}:80", "busybox",
      "sh", "-c", "echo hello-$(hostname) > /www; mkdir /w; mv /www /w/index.html; exec httpd -f -p 80 -h /w")
    helper = [p for p in ru.processes() if _cmd(p).split(" ")[0].endswith(tool if tool == "slirp4netns" else "pasta")
              or ("pasta" in _cmd(p) and tool == "pasta")]
    assert helper, f"no {tool} process"
    reply = wait_for(lambda: _try(lambda: _get(port)), timeout=10)
    assert reply and reply.startswith("HTTP/1.") and "hello-" in reply, reply
    addr = e("container", "exec", "web", "ip", "-4", "-o", "addr", "show").stdout
    assert "10.0.2.100/24" in addr and " lo " in addr
    insp = json.loads(e("container", "inspect", "web").stdout)[0]
    assert insp["NetworkSettings"]["Ports"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    # The published port belongs to the network helper, and goes with the container.
    e("container", "stop", "-t", "0", "web")
    assert wait_for(lambda: not any(tool in _cmd(p) or "passt" in _cmd(p) for p in ru.processes()))
    assert wait_for(lambda: _try(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or 1)
                    is None, timeout=10), "the published port outlived the container"
    e("container", "rm", "web")


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def test_network_none_has_only_lo_and_bad_modes_are_refused(ru, busybox_tar):
    e = Eng(ru, ru.mkdtemp("xdg"))
    e("image", "import", busybox_tar, "busybox")
    out = e("container", "run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
    host = e("container", "run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net").stdout.split()
    assert host == sorted(os.listdir("/sys/class/net"))
    for args, msg in ((["--network", "mynet"], "bridge networks need root"),
                      (["--network", "none", "-p", "8080:80"], "-p publishes ports through slirp4netns or pasta"),
                      (["--ip", "10.0.0.5"], "--ip needs a bridge network")):
        p = e("container", "run", "--rm", *args, "busybox", "true", check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and msg in p.stderr, p.stderr
    assert e("container", "ls", "-a", "-q").stdout == ""


def test_root_cleans_up_a_running_rootless_container(ru, busybox_tar):
    """What root's cleanup (kill the user's processes) leaves: no process (container, monitor,
    slirp4netns), no mount (overlay is in the container's own namespace), and the next
    engine command sees the container exited."""
    e = Eng(ru, ru.mkdtemp("xdg"))
    e("image", "import", busybox_tar, "busybox")
    e("container", "run", "-d", "--name", "bg", "-p", f"127.0.0.1:{_free_port()}:80", "busybox", "sleep", "1000")
    assert any("slirp4netns" in _cmd(p) for p in ru.processes())
    assert any(_cmd(p).startswith("sleep 1000") for p in ru.processes())
    assert ru.mounts() == []  # the overlay lives in the container's mount namespace only
    ru.kill_processes()
    assert ru.processes() == [] and ru.mounts() == []
    assert json.loads(e("container", "inspect", "bg").stdout)[0]["State"]["Status"] == "exited"
    e("container", "rm", "bg")
    assert ru.processes() == []


def test_pull_from_a_loopback_registry_and_run(ru, tmp_path):
    """Debian's docker-registry on 127.0.0.1 (started as tests/integration/test_registry.py
    does), an image pushed there by skopeo, pulled and run by the user."""
    import shutil
    from test_registry import Registry, skopeo, _run
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.skip("skopeo and umoci are needed")
    from ketch import busybox
    lay, bun = str(tmp_path / "layout"), str(tmp_path / "bundle")
    _run("umoci", "init", "--layout", lay)
    _run("umoci", "new", "--image", f"{lay}:latest")
    _run("umoci", "unpack", "--image", f"{lay}:latest", bun)
    shutil.rmtree(os.path.join(bun, "rootfs"))
    busybox.make_rootfs(os.path.join(bun, "rootfs"))
    os.makedirs(os.path.join(bun, "rootfs", "home", "u"))
    with open(os.path.join(bun, "rootfs", "home", "u", "motd"), "w") as f:
        f.write("pulled from a registry\n")
    os.chown(os.path.join(bun, "rootfs", "home", "u", "motd"), 1000, 1000)
    _run("umoci", "repack", "--image", f"{lay}:latest", bun)
    _run("umoci", "config", "--image", f"{lay}:latest", "--config.cmd", "sh", "--config.cmd", "-c",
         "--config.cmd", "stat -c %u /home/u/motd; cat /home/u/motd")
    reg = Registry(tmp_path / "reg")
    try:
        src = f"{reg.host}/demo/busybox:1"
        skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{lay}:latest", f"docker://{src}")
        e = Eng(ru, ru.mkdtemp("xdg"))
        env = e.env(KETCH_REGISTRIES_ALLOWED="127.0.0.1:*")
        image_id = e("image", "pull", "--tls-verify=false", src, env=env).stdout.strip()
        assert image_id.startswith("sha256:")
        out = e("container", "run", "--rm", "--network", "none", src, env=env).stdout
        assert out == "1000\npulled from a registry\n"
        motd = [os.path.join(r, "motd") for r, _, fs in os.walk(e.store) if "motd" in fs]
        assert motd and all(os.stat(m).st_uid == host_ids(ru, 1000) for m in motd)
    finally:
        reg.stop()


# -- fuse-overlayfs ------------------------------------------------------------------------

def _fuse_daemons(ru):
    return [p for p in ru.processes() if _cmd(p).split(" ")[0].endswith("fuse-overlayfs")]


def _host_fuse_mounts():
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - fuse" in line]


def _tree_state(top):
    """{relative path: (mode, uid, size, mtime_ns, xattrs)} of a layer directory, read as root."""
    out = {}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
                                            sorted(os.listxattr(p, follow_symlinks=False)))
    return out


def _ns(pid, kind):
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_fuse_overlayfs_daemon_in_the_users_namespaces_and_gone_with_the_container(ru, busybox_tar):
    """fuse-overlayfs serves the container's root from the container's user namespace and
    a mount namespace of its own: never mounted on the host, invisible to the container,
    lower layers untouched, and no daemon left after stop, run --rm, rm -f of a container
    whose monitor was killed."""
    e = Eng(ru, ru.mkdtemp("xdg"), "fuse-overlayfs")
    e("image", "import", busybox_tar, "busybox")
    assert "Storage Driver: fuse-overlayfs\n" in e("image", "info").stdout
    home = os.path.join(e.store, "fuse-overlayfs")
    lowers = {n: _tree_state(os.path.join(home, n, "diff")) for n in os.listdir(home) if n != "l"}
    assert len(lowers) == 1
    assert _fuse_daemons(ru) == []
    cid = e("container", "run", "-d", "--name", "f1", "--network", "none", "busybox", "sh", "-c",
            "echo changed >> /etc/passwd; rm /bin/ls; rm -rf /home; mkdir -p /home/n; touch /home/n/f; "
            "chown 1000 /home/n/f; echo ready; exec sleep 1000").stdout.strip()
    assert wait_for(lambda: "ready" in e("container", "logs", "f1").stdout, timeout=30)
    daemons = _fuse_daemons(ru)
    assert len(daemons) == 1, [_cmd(p) for p in ru.processes()]
    init = json.loads(e("container", "inspect", "f1").stdout)[0]["State"]["Pid"]
    d = daemons[0]
    # The container's user namespace (its maps) is the daemon's; its pid namespace is not.
    assert _ns(d, "user") == _ns(init, "user") != _ns(os.getpid(), "user")
    assert _ns(d, "pid") == _ns(os.getpid(), "pid") != _ns(init, "pid")
    assert _ns(d, "mnt") not in (_ns(os.getpid(), "mnt"), _ns(init, "mnt"))
    with open(f"/proc/{init}/uid_map") as f:
        assert f.read().split() == ["0", str(ru.uid), "1", "1", str(ru.subuid[0]), str(ru.subuid[1])]
    # Mounted in the container's namespace only, and nowhere in the daemon's or the host's.
    with open(f"/proc/{init}/mountinfo") as f:
        root = [line for line in f if line.split()[4] == "/"]
    assert root and root[-1].split(" - ")[1].startswith("fuse.fuse-overlayfs "), root
    assert _host_fuse_mounts() == []
    with open(f"/proc/{d}/mountinfo") as f:
        assert " - fuse" not in f.read()
    # The container sees its own processes only.
    ps = e("container", "exec", "f1", "ps", "-o", "pid,args").stdout
    assert "fuse" not in ps and "sleep 1000" in ps
    # Writes went to the container's layer; the image's layer is as it was.
    for n, state in lowers.items():
        assert _tree_state(os.path.join(home, n, "diff")) == state
    upper = os.path.join(home, cid, "diff")
    with open(os.path.join(upper, "etc", "passwd")) as f:
        assert f.read().endswith("changed\n")
    wh = os.lstat(os.path.join(upper, "bin", "ls"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.stat(os.path.join(upper, "home", "n", "f")).st_uid == host_ids(ru, 1000)
    # The commit holds the change, the deletion and the opaque directory.
    e("container", "stop", "-t", "0", "f1")
    assert _fuse_daemons(ru) == [], "the daemon outlived stop"  # stop waits for the monitor, which waits for it
    e("container", "commit", "f1", "fused:1")
    out = e("container", "run", "--rm", "--network", "none", "fused:1", "sh", "-c",
            "tail -1 /etc/passwd; ls /bin/ls 2>&1; ls /home; stat -c %u /home/n/f").stdout
    assert out.splitlines()[0] == "changed" and "No such file" in out.splitlines()[1]
    assert out.splitlines()[2:] == ["n", "1000"], out
    assert _fuse_daemons(ru) == []  # run --rm waited for its daemon
    # A killed monitor: the container and its daemon run on; rm -f ends both.
    e("container", "start", "f1")
    assert wait_for(lambda: len(_fuse_daemons(ru)) == 1, timeout=30)
    rec = json.loads(e("container", "inspect", "f1").stdout)[0]
    mon = rec["State"]["MonitorPid"]
    assert mon in ru.processes()
    os.kill(mon, 9)
    assert wait_for(lambda: mon not in ru.processes(), timeout=10)
    assert e("container", "exec", "f1", "cat", "/etc/hostname").stdout.strip() == rec["Config"]["Hostname"]
    e("container", "rm", "-f", "f1")
    assert _fuse_daemons(ru) == [] and _host_fuse_mounts() == []
    e("image", "rm", "fused:1")


def test_fuse_overlayfs_is_refused_by_the_rootful_engine(tmp_path, busybox_tar):
    p = subprocess.run([KETCH, "image", "import", "--storage-root", str(tmp_path / "s"), "--storage-driver",
                        "fuse-overlayfs", busybox_tar, "busybox"], capture_output=True, text=True)
    assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
    assert "storage driver fuse-overlayfs does not work" in p.stderr
    assert not os.path.exists(tmp_path / "s" / "storage-driver")


def test_fuse_overlayfs_is_the_choice_where_the_kernel_refuses_overlay_in_the_userns(ru, busybox_tar):
    """Storage on an overlayfs (a home inside a container): the kernel will not take an
    overlayfs upper dir for an overlay mounted in a user namespace, fuse-overlayfs does."""
    top = ru.mkdtemp("ovl")
    for d in ("l", "u", "w", "m"):
        os.mkdir(os.path.join(top, d))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={top}/l,upperdir={top}/u,workdir={top}/w", f"{top}/m"], check=True)
    try:
        os.chown(f"{top}/m", ru.uid, ru.gid)
        e = Eng(ru, f"{top}/m")
        e("image", "import", busybox_tar, "busybox")
        assert "Storage Driver: fuse-overlayfs\n" in e("image", "info").stdout
        out = e("container", "run", "--rm", "--network", "none", "busybox", "sh", "-c",
                "echo x > /new; cat /new; grep -c ' / .*fuse.fuse-overlayfs' /proc/self/mountinfo").stdout
        assert out.split() == ["x", "1"]
        assert _fuse_daemons(ru) == []
    finally:
        ru.kill_processes()
        subprocess.run(["umount", "-l", f"{top}/m"], check=True)
