"""The engine end to end, as root: images imported from archives built here (rootfs tarball,
`docker save`, OCI layout), containers run through the runtime, checked from inside."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from ketch import busybox
from ketch.engine import Engine, storage
from ketch.engine.network import config as netconfig
from ketch.errors import ContainerExists, ImageError, InvalidState

from conftest import KETCH, wait_for

OVERLAY = storage.driver_class("overlay").supported("/tmp/ketch-overlay-probe")
DRIVERS = ["vfs"] + (["overlay"] if OVERLAY else [])
MAP = [{"containerID": 0, "hostID": 200000, "size": 65536}]


@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory):
    d = tmp_path_factory.mktemp("bbtar")
    root = busybox.make_rootfs(str(d / "rootfs"))
    path = str(d / "busybox.tar")
    with tarfile.open(path, "w") as t:
        t.add(root, arcname=".")
    return path


def _layer_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def make_docker_save(layer, out, tag="saved/busybox:1"):
    """A `docker save` archive: manifest.json, <config>.json, <dir>/layer.tar."""
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh", "-c", "echo from-docker"],
                      "Env": ["PATH=/bin", "FROM=docker"]}, "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    files = {cfg_name: cfg, "abc/layer.tar": layer,
             "manifest.json": json.dumps([{"Config": cfg_name, "RepoTags": [tag],
                                           "Layers": ["abc/layer.tar"]}]).encode()}
    with tarfile.open(out, "w") as t:
        for n, data in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return out


def make_oci_archive(layer, out, ref="oci/busybox:2"):
    import gzip
    gz = gzip.compress(layer, mtime=0)
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    blobs = {}

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": "sha256:" + d, "size": len(data)}

    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["echo"],
                      "Cmd": ["from-oci"], "WorkingDir": "/srv"},
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": dict(blob(cfg), mediaType="application/vnd.oci.image.config.v1+json"),
                      "layers": [dict(blob(gz), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")]}).encode()
    mdesc = dict(blob(man), mediaType="application/vnd.oci.image.manifest.v1+json",
                 annotations={"io.containerd.image.name": ref})
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [mdesc]}).encode()}
    files.update({f"blobs/sha256/{d}": data for d, data in blobs.items()})
    with tarfile.open(out, "w") as t:
        for n, data in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return out


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


@pytest.fixture(params=DRIVERS)
def eng(request, testns, tmp_path, runtime_root, rootfs_tar):
    """(In a network namespace of the test's own: containers attach to the default bridge.)"""
    e = Engine(storage_root=str(tmp_path / "store"), runtime_root=runtime_root, driver=request.param)
    e.images.import_tarball(rootfs_tar, "bb", config={"Cmd": ["sh"]})
    yield e
    e.store.wait_removals()  # the teardowns of `container run --rm` the CLI returned before
    for rec in e.containers.list(all=True):
        e.containers.remove(rec["Id"], force=True)
    # Nothing of a container is left: runtime state, layers, mounts, records.
    assert os.listdir(runtime_root) in ([], ["selinux"])
    assert set(e.images.driver.ids()) == {x["chainID"][7:] for i in e.images.list()
                                          for x in e.images.record(i["Id"])["layers"]}
    assert _mounts_under(tmp_path) == []
    cdir = os.path.join(e.storage_root, "containers")
    assert [n for n in os.listdir(cdir) if n not in ("lock", "names")] == [] if os.path.isdir(cdir) else True


def sh(eng, script, **kw):
    r = eng.containers.run("bb", ["sh", "-c", script], remove=True, **kw)
    return r


def test_default_mounts_from_inside(eng):
    r = sh(eng, "cat /etc/resolv.conf; echo ---; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; "
                "df -k /dev/shm | tail -1; grep -E ' /etc/(hosts|hostname|resolv.conf) | /dev/(shm|mqueue) ' "
                "/proc/mounts; echo x > /etc/hosts && echo wrote", hostname="box1", shm_size="8m")
    assert r.exit_code == 0, r
    resolv, hostname, hosts, rest = r.stdout.decode().split("---\n")
    with open("/etc/resolv.conf") as f:
        assert resolv == netconfig.resolv_conf(f.read(), "bridge")
    ns = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")]
    assert ns and not any(a.startswith("127.") or a == "::1" for a in ns)
    assert hostname == "box1\n"
    # on the default bridge the hostname is on the container's address, as Docker writes it
    assert "127.0.0.1\tlocalhost" in hosts and any(ln.startswith("10.89.0.") and ln.endswith("\tbox1")
                                                   for ln in hosts.splitlines())
    lines = rest.splitlines()
    assert lines[0].split()[1] == str(8 * 1024)
    mounts = {ln.split()[1]: ln.split() for ln in lines[1:-1]}
    assert set(mounts) == {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm", "/dev/mqueue"}
    assert mounts["/dev/shm"][2] == "tmpfs" and mounts["/dev/mqueue"][2] == "mqueue"
    assert mounts["/etc/hosts"][3].split(",")[0] == "rw" and lines[-1] == "wrote"


def test_read_only_rootfs_makes_the_network_files_read_only(eng):
    r = sh(eng, "grep -E ' /etc/(hosts|resolv.conf) | / ' /proc/mounts | awk '{print $2, $4}'; "
                "touch /newfile 2>/dev/null || echo rootfs-ro; echo x >> /etc/hosts 2>/dev/null || echo hosts-ro; "
                "touch /dev/shm/ok && echo shm-rw; touch /scratch/ok && echo tmpfs-rw",
           read_only=True, tmpfs=["/scratch"])
    assert r.exit_code == 0, r
    out = r.stdout.decode().splitlines()
    opts = {ln.split()[0]: ln.split()[1].split(",")[0] for ln in out if ln.startswith("/")}
    assert opts == {"/": "ro", "/etc/hosts": "ro", "/etc/resolv.conf": "ro"}
    assert out[-4:] == ["rootfs-ro", "hosts-ro", "shm-rw", "tmpfs-rw"]


def test_user_dev_shm_replaces_the_default(eng, tmp_path):
    mine = tmp_path / "myshm"
    mine.mkdir()
    r = sh(eng, "echo hi > /dev/shm/f; grep ' /dev/shm ' /proc/mounts | wc -l", volumes=[f"{mine}:/dev/shm"])
    assert r.exit_code == 0 and r.stdout.decode().strip() == "1"
    assert (mine / "f").read_text() == "hi\n"


def test_volumes_env_workdir_user(eng, tmp_path, monkeypatch):
    host = tmp_path / "vol"
    host.mkdir()
    (host / "in").write_text("from host\n")
    host.chmod(0o777)  # the container writes as nobody
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o777)  # so only the ro mount refuses the write
    monkeypatch.setenv("PASSED", "through")
    r = sh(eng, "cat /mnt/in; echo from-container > /mnt/out; touch /ro/x 2>/dev/null || echo ro-refused; "
                "echo $A $PASSED $HOSTNAME; pwd; id -u; id -g",
           volumes=[f"{host}:/mnt", f"{ro}:/ro:ro"], env=["A=1", "PASSED"], workdir="/made/here",
           user="nobody", hostname="hn")
    assert r.exit_code == 0, r
    assert r.stdout.decode().splitlines() == ["from host", "ro-refused", "1 through hn", "/made/here",
                                              "65534", "65534"]
    assert (host / "out").read_text() == "from-container\n"
    assert not (ro / "x").exists()
    assert sh(eng, "id -u; id -g", user="123:45").stdout == b"123\n45\n"


def test_exit_codes_and_stderr(eng):
    r = sh(eng, "echo out; echo err >&2; exit 42")
    assert (r.exit_code, r.stdout, r.stderr) == (42, b"out\n", b"err\n")
    cid = eng.containers.run("bb", ["sleep", "60"], detach=True)
    eng.containers.kill(cid, "KILL")
    assert eng.containers.wait(cid, 10) == 137
    eng.containers.remove(cid)
    with pytest.raises(Exception, match="no such image"):
        eng.containers.run("nope", ["true"])


def _ketch(eng, *args, check=True, **kw):
    env = dict(os.environ, KETCH_STORAGE_ROOT=eng.storage_root)
    p = subprocess.run([KETCH, "--root", eng.runtime_root, *args], capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=60, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"ketch {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def test_detached_logs_exec_stop_rm_through_the_cli(eng, cid):
    out = _ketch(eng, "container", "run", "-d", "--name", cid, "bb", "sh", "-c",
                 "echo started; echo oops >&2; trap 'echo bye; exit 7' TERM; while :; do sleep 0.05; done")
    long_id = out.stdout.strip()
    assert len(long_id) == 64
    ls = _ketch(eng, "container", "ls").stdout.splitlines()
    assert ls[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    assert ls[1].startswith(long_id[:12]) and ls[1].endswith(cid) and " Up " in ls[1]
    assert _ketch(eng, "container", "ls", "-q").stdout == long_id[:12] + "\n"
    assert wait_for(lambda: _ketch(eng, "container", "logs", cid).stdout == "started\n")
    assert _ketch(eng, "container", "logs", cid).stderr == "oops\n"
    ex = _ketch(eng, "container", "exec", "-e", "X=1", cid, "sh", "-c", "echo $X; cat /etc/hostname")
    assert ex.stdout == f"1\n{long_id[:12]}\n"
    rm = _ketch(eng, "container", "rm", cid, check=False)
    assert rm.returncode == 1 and "is running" in rm.stderr
    pid = eng.containers.inspect(cid)["State"]["Pid"]
    assert _ketch(eng, "container", "stop", cid).stdout == cid + "\n"
    assert not os.path.exists(f"/proc/{pid}")
    st = eng.containers.inspect(cid)["State"]
    assert (st["Status"], st["ExitCode"]) == ("exited", 7)
    assert _ketch(eng, "container", "logs", cid).stdout == "started\nbye\n"
    assert " Exited (7) " in _ketch(eng, "container", "ls", "-a").stdout
    assert _ketch(eng, "container", "ls", "-q").stdout == ""
    assert os.listdir(eng.runtime_root) in ([], ["selinux"])  # a stopped container holds no runtime state
    insp = json.loads(_ketch(eng, "container", "inspect", cid).stdout)
    assert insp[0]["Id"] == long_id and insp[0]["Name"] == "/" + cid
    _ketch(eng, "container", "rm", cid)
    assert _ketch(eng, "container", "ls", "-aq").stdout == ""


def test_stop_kills_after_the_timeout_and_rm_force(eng, cid):
    eng.containers.run("bb", ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"], detach=True, name=cid)
    assert eng.containers.stop(cid, timeout=0.5) == 137
    eng.containers.start(cid)  # an exited container starts again
    assert eng.containers.inspect(cid)["State"]["Status"] == "running"
    with pytest.raises(InvalidState):
        eng.containers.remove(cid)
    eng.containers.remove(cid, force=True)


def test_foreground_cli_run_exit_code_and_rm(eng, cid):
    p = _ketch(eng, "container", "run", "--rm", "--name", cid, "bb", "sh", "-c", "echo hello; exit 5", check=False)
    assert (p.returncode, p.stdout) == (5, "hello\n")
    assert _ketch(eng, "container", "ls", "-aq").stdout == ""
    p = _ketch(eng, "container", "run", "--rm", "bb", "/no/such/binary", check=False)
    assert p.returncode != 0 and "/no/such/binary" in p.stderr
    assert _ketch(eng, "container", "ls", "-aq").stdout == ""


def test_name_in_use(eng, cid):
    eng.containers.create("bb", ["true"], name=cid)
    with pytest.raises(ContainerExists):
        eng.containers.create("bb", ["true"], name=cid)
    p = _ketch(eng, "container", "create", "--name", cid, "bb", "true", check=False)
    assert p.returncode == 1 and cid in p.stderr and p.stderr.count("\n") == 1


def test_commit_and_rerun(eng, cid):
    r = eng.containers.run("bb", ["sh", "-c", "echo committed > /data.txt; rm /bin/vi"], name=cid)
    assert r.exit_code == 0
    image_id = _ketch(eng, "container", "commit", "-m", "add data", cid, "bb:committed").stdout.strip()
    assert eng.images.resolve("bb:committed") == image_id
    r = eng.containers.run("bb:committed", ["sh", "-c", "cat /data.txt; test -e /bin/vi || echo vi-gone"],
                           remove=True)
    assert r.stdout == b"committed\nvi-gone\n"
    eng.containers.remove(cid)
    p = _ketch(eng, "image", "rm", "bb:committed")
    assert f"Deleted: {image_id}" in p.stdout


def test_image_in_use_is_not_removed(eng, cid):
    eng.containers.create("bb", ["true"], name=cid)
    p = _ketch(eng, "image", "rm", "bb", check=False)
    assert p.returncode == 1 and "in use" in p.stderr and cid in p.stderr
    assert eng.images.resolve("bb")
    eng.containers.remove(cid)
    assert "Untagged: bb:latest" in _ketch(eng, "image", "rm", "bb").stdout


def test_docker_save_and_oci_archives_load_run_save(eng, rootfs_tar, tmp_path):
    layer = _layer_bytes(rootfs_tar)
    dsave = make_docker_save(layer, str(tmp_path / "docker.tar"))
    oci = make_oci_archive(layer, str(tmp_path / "oci.tar"))
    assert _ketch(eng, "image", "load", "-i", dsave).stdout == "Loaded image: saved/busybox:1\n"
    assert _ketch(eng, "image", "load", oci).stdout == "Loaded image: oci/busybox:2\n"
    r = eng.containers.run("saved/busybox:1", remove=True)
    assert r.stdout == b"from-docker\n"
    assert eng.containers.run("saved/busybox:1", ["sh", "-c", "echo $FROM"], remove=True).stdout == b"docker\n"
    r = eng.containers.run("oci/busybox:2", remove=True)
    assert r.stdout == b"from-oci\n"
    assert eng.containers.run("oci/busybox:2", ["$PWD"], remove=True).stdout == b"$PWD\n"
    assert eng.containers.run("oci/busybox:2", ["sh", "-c", "pwd"], entrypoint="", remove=True).stdout == b"/srv\n"
    ls = _ketch(eng, "image", "ls").stdout.splitlines()
    assert ls[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert {(ln.split()[0], ln.split()[1]) for ln in ls[1:]} == {("bb", "latest"), ("saved/busybox", "1"),
                                                                  ("oci/busybox", "2")}
    insp = json.loads(_ketch(eng, "image", "inspect", "oci/busybox:2").stdout)[0]
    assert insp["Config"]["Entrypoint"] == ["echo"] and insp["RepoTags"] == ["oci/busybox:2"]
    _ketch(eng, "image", "tag", "oci/busybox:2", "again:3")
    out = str(tmp_path / "saved.tar")
    _ketch(eng, "image", "save", "-o", out, "again:3")
    other = Engine(storage_root=str(tmp_path / "other"), runtime_root=eng.runtime_root)
    assert other.images.load(out) == [(insp["Id"], ["again:3"])]
    assert other.containers.run("again:3", remove=True).stdout == b"from-oci\n"


def test_bad_archives_leave_nothing(eng, tmp_path, rootfs_tar):
    before = sorted(os.listdir(os.path.join(eng.storage_root, "images", "blobs", "sha256")))
    layers = eng.images.driver.ids()
    good = make_docker_save(_layer_bytes(rootfs_tar), str(tmp_path / "d.tar"))
    with open(good, "rb") as f:
        data = f.read()
    cut = tmp_path / "truncated.tar"
    cut.write_bytes(data[:len(data) // 2])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all" * 100)
    for bad in (cut, junk):
        p = _ketch(eng, "image", "load", str(bad), check=False)
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("ketch: "), p.stderr
    p = _ketch(eng, "image", "import", str(junk), "junk", check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert sorted(os.listdir(os.path.join(eng.storage_root, "images", "blobs", "sha256"))) == before
    assert eng.images.driver.ids() == layers
    assert [i["RepoTags"] for i in eng.images.list()] == [["bb:latest"]]
    p = _ketch(eng, "container", "run", "--rm", "--pull", "never", "nosuch:tag", "true", check=False)
    assert p.returncode == 1 and p.stderr == "ketch: no such image: nosuch:tag\n"


@pytest.fixture
def open_dir():
    """A scratch directory every uid may traverse (a user namespace's root is an unprivileged
    host uid: it must reach the layers through the path; pytest's tmp_path is 0700)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="ketch-engine-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d)


def test_uid_mapped_store_runs_containers_in_a_user_namespace(testns, open_dir, runtime_root, rootfs_tar, cid):
    e = Engine(storage_root=os.path.join(open_dir, "mapped"), runtime_root=runtime_root, driver="vfs",
               uid_map=MAP, gid_map=MAP)
    e.images.import_tarball(rootfs_tar, "bb")
    try:
        r = e.containers.run("bb", ["sh", "-c", "id -u; stat -c '%u %g' /bin/busybox /etc/hosts; "
                                    "cat /proc/self/uid_map; touch /made && stat -c %u /made"], name=cid)
        assert r.exit_code == 0, r
        lines = r.stdout.decode().split("\n")
        assert lines[0] == "0" and lines[1] == "0 0" and lines[2] == "0 0"
        assert lines[3].split() == ["0", "200000", "65536"] and lines[4] == "0"
        root = e.images.driver.get(e.containers.inspect(cid)["Id"])
        assert os.stat(os.path.join(root, "made")).st_uid == 200000
        assert os.stat(os.path.join(root, "bin", "busybox")).st_uid == 200000
    finally:
        for rec in e.containers.list(all=True):
            e.containers.remove(rec["Id"], force=True)
    assert os.listdir(runtime_root) in ([], ["selinux"])


def test_tty_run(eng):
    r = eng.containers.run("bb", ["sh", "-c", "tty; echo $TERM"], tty=True, remove=True)
    assert r.exit_code == 0 and r.stdout.replace(b"\r", b"").split(b"\n")[:2] == [b"/dev/pts/0", b"xterm"]


def test_python_api_example_from_the_readme(testns, tmp_path, runtime_root, rootfs_tar):
    code = f"""
from ketch.engine import Engine
eng = Engine(storage_root={str(tmp_path / 'api')!r}, runtime_root={runtime_root!r})
eng.images.import_tarball({rootfs_tar!r}, "busybox")
r = eng.containers.run("busybox", ["sh", "-c", "echo hi; exit 3"], remove=True)
print(r.exit_code, r.stdout)
cid = eng.containers.run("busybox", ["sleep", "60"], detach=True, name="sleeper")
print(eng.containers.exec("sleeper", ["hostname"])[1] == cid[:12].encode() + b"\\n")
print(eng.containers.stop("sleeper", timeout=1))
eng.containers.remove("sleeper")
"""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=src))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["3 b'hi\\n'", "True", "137"]
