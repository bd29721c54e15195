"""Hostile image archives and missing images (issue 12, finding 7, the engine's part): deeply
nested JSON in an index, a manifest or a config, oversized configs, FIFOs and devices in an OCI
layout, each give one error line and leave nothing behind; `image rm`/`inspect`/`tag` of a
missing image create no storage root and mount nothing."""

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from conftest import KETCH

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"


def ketch(root, *args, timeout=60):
    env = dict(os.environ, KETCH_STORAGE_ROOT=str(root))
    return subprocess.run([KETCH, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def one_line(p, *words):
    assert p.returncode != 0, p
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def nested(depth):
    return b"[" * depth + b"]" * depth


def oci_files(config=None, manifest=None, index=None):
    """{name: bytes} of an OCI layout with one empty-layer image; any document may be replaced."""
    blobs = {}

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        blobs[f"blobs/sha256/{d}"] = data
        return {"digest": "sha256:" + d, "size": len(data)}

    layer = io.BytesIO()
    tarfile.open(fileobj=layer, mode="w").close()
    layer = layer.getvalue()
    cfg = config if config is not None else json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    man = manifest if manifest is not None else json.dumps({
        "schemaVersion": 2, "mediaType": MT_MANIFEST, "config": dict(blob(cfg), mediaType=MT_CONFIG),
        "layers": [dict(blob(layer), mediaType="application/vnd.oci.image.layer.v1.tar")]}).encode()
    idx = index if index is not None else json.dumps({"schemaVersion": 2, "manifests": [
        dict(blob(man), mediaType=MT_MANIFEST, annotations={"io.containerd.image.name": "x/y:1"})]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": idx}
    files.update(blobs)
    return files


def write_tar(files, path):
    with tarfile.open(path, "w") as t:
        for n, data in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return str(path)


def blobs_left(root):
    d = os.path.join(root, "images", "blobs", "sha256")
    return [n for n in os.listdir(d) if not n.startswith(".")] if os.path.isdir(d) else []


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "store")


def test_a_good_archive_loads(root, tmp_path):
    p = ketch(root, "image", "load", "-i", write_tar(oci_files(), tmp_path / "ok.tar"))
    assert p.returncode == 0 and "x/y:1" in p.stdout, p


@pytest.mark.parametrize("where", ["index", "manifest", "config"])
@pytest.mark.parametrize("depth", [100, 200000])
def test_deeply_nested_json_is_one_error_line(root, tmp_path, where, depth):
    files = oci_files(**{where: nested(depth)})
    p = ketch(root, "image", "load", "-i", write_tar(files, tmp_path / "deep.tar"))
    one_line(p, "nested deeper than")
    assert blobs_left(root) == []


def test_deeply_nested_docker_save_config(root, tmp_path):
    cfg = b'{"a":' * 100000 + b"1" + b"}" * 100000
    name = hashlib.sha256(cfg).hexdigest() + ".json"
    files = {name: cfg, "manifest.json": json.dumps([{"Config": name, "RepoTags": ["d/e:1"],
                                                      "Layers": []}]).encode()}
    p = ketch(root, "image", "load", "-i", write_tar(files, tmp_path / "deep.tar"))
    one_line(p, "nested deeper than")
    assert blobs_left(root) == []


def test_an_oversized_config_is_refused(root, tmp_path):
    big = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                      "config": {"Labels": {"pad": "x" * (17 << 20)}}}).encode()
    p = ketch(root, "image", "load", "-i", write_tar(oci_files(config=big), tmp_path / "big.tar"))
    one_line(p, "larger than")
    assert blobs_left(root) == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_in_an_oci_layout_is_refused(root, tmp_path, kind):
    layout = tmp_path / "layout"
    files = oci_files()
    for n, data in files.items():
        (layout / n).parent.mkdir(parents=True, exist_ok=True)
        (layout / n).write_bytes(data)
    # The layer blob (the biggest): read without a check, /dev/zero would never end, a FIFO never start.
    victim = max((n for n in files if n.startswith("blobs/")), key=lambda n: len(files[n]))
    os.unlink(layout / victim)
    if kind == "fifo":
        os.mkfifo(layout / victim)
    else:
        os.mknod(layout / victim, 0o020644, os.makedev(1, 5))
    p = ketch(root, "image", "load", "-i", str(layout), timeout=30)
    one_line(p, victim)
    assert blobs_left(root) == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_in_a_docker_save_directory_is_refused(root, tmp_path, kind):
    layout = tmp_path / "saved"
    (layout / "abc").mkdir(parents=True)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [
        "sha256:" + "0" * 64]}}).encode()
    name = hashlib.sha256(cfg).hexdigest() + ".json"
    (layout / name).write_bytes(cfg)
    (layout / "manifest.json").write_text(json.dumps([{"Config": name, "RepoTags": ["d/e:1"],
                                                       "Layers": ["abc/layer.tar"]}]))
    if kind == "fifo":
        os.mkfifo(layout / "abc" / "layer.tar")
    else:
        os.mknod(layout / "abc" / "layer.tar", 0o020644, os.makedev(1, 5))
    p = ketch(root, "image", "load", "-i", str(layout), timeout=30)
    one_line(p, "abc/layer.tar is not a regular file")
    assert blobs_left(root) == []


def test_a_symlink_in_an_oci_layout_stays_inside_it(root, tmp_path):
    layout = tmp_path / "layout"
    layout.mkdir()
    host = tmp_path / "host-index.json"
    host.write_bytes(oci_files()["index.json"])
    for n, data in oci_files().items():
        (layout / n).parent.mkdir(parents=True, exist_ok=True)
        (layout / n).write_bytes(data)
    os.unlink(layout / "index.json")
    os.symlink(str(host), layout / "index.json")
    p = ketch(root, "image", "load", "-i", str(layout))
    one_line(p, "index.json")
    assert blobs_left(root) == []


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


@pytest.mark.parametrize("verb", [["image", "rm", "nope"], ["image", "inspect", "nope"],
                                  ["image", "tag", "nope", "other"], ["image", "save", "-o", "/dev/null", "nope"],
                                  ["container", "rm", "nope"], ["container", "inspect", "nope"],
                                  ["container", "create", "nope"]])
def test_a_missing_image_or_container_creates_nothing(tmp_path, verb):
    root = tmp_path / "never" / "store"
    p = ketch(root, *verb)
    assert p.returncode != 0 and "nope" in p.stderr and "Traceback" not in p.stderr, p
    assert p.stderr.count("\n") == 1, p.stderr
    assert not os.path.exists(tmp_path / "never")
    assert _mounts_under(tmp_path) == []
