"""ketch.engine.images on the vfs driver in a temp storage root: import, query, names, removal, save, bad input."""

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from ketch.engine.images import ImageStore, chain_ids, normalize_name
from ketch.errors import ImageError


def layer(*files, gz=False):
    """An uncompressed (or gzip) layer tar from (name, data | None for a dir | ('wh',))."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                t.addfile(ti, io.BytesIO(data))
    raw = b.getvalue()
    return raw, (gzip.compress(raw, mtime=0) if gz else raw)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def config_for(raws, **cfg):
    return json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                       "config": cfg, "rootfs": {"type": "layers", "diff_ids": [sha(r) for r in raws]}},
                      sort_keys=True).encode()


def oci_layout(path, layers, ref="docker.io/library/demo:1", as_tar=False, cfg=None, tamper=None):
    """Write an OCI image layout (as skopeo/podman do) with `layers` [(raw, blob)]."""
    blobs = {}
    config = config_for([r for r, _ in layers], **(cfg or {"Cmd": ["/bin/sh"], "Env": ["A=1"]}))
    blobs[sha(config)] = config
    lds = []
    for raw, blob in layers:
        blobs[sha(blob)] = blob
        mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if blob[:2] == b"\x1f\x8b" else "")
        lds.append({"mediaType": mt, "digest": sha(blob), "size": len(blob)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(config), "size": len(config)},
                           "layers": lds}).encode()
    blobs[sha(manifest)] = manifest
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
            "size": len(manifest)}
    if ref:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()}
    for d, b in blobs.items():
        files[f"blobs/sha256/{d[7:]}"] = b
    if tamper:
        tamper(files)
    _write(path, files, as_tar)
    return sha(config)


def docker_archive(path, layers, tags=("demo:latest",)):
    config = config_for([r for r, _ in layers], Cmd=["/bin/true"])
    cid = hashlib.sha256(config).hexdigest()
    files = {f"{cid}.json": config}
    names = []
    for i, (raw, blob) in enumerate(layers):
        files[f"layer{i}/layer.tar"] = blob
        names.append(f"layer{i}/layer.tar")
    files["manifest.json"] = json.dumps([{"Config": f"{cid}.json", "RepoTags": list(tags),
                                          "Layers": names}]).encode()
    _write(path, files, True)
    return "sha256:" + cid


def _write(path, files, as_tar):
    if as_tar:
        with tarfile.open(path, "w") as t:
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    else:
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(path, name)) or path, exist_ok=True)
            with open(os.path.join(path, name), "wb") as f:
                f.write(data)


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "root"), driver="vfs", progress=False)


BASE = layer(("etc", None), ("etc/os-release", b"ID=demo\n"), ("bin/sh", b"#!shell"), ("old", b"x"))
TOP = layer(("etc/motd", b"hello\n"), (".wh.old", b""), gz=True)


def state(store):
    """Everything on disk under the store, to show a failed change left nothing."""
    out = []
    for dp, dirs, files in os.walk(store.root):
        for n in dirs + files:
            p = os.path.relpath(os.path.join(dp, n), store.root)
            if p != "images/lock":
                out.append(p)
    return sorted(out)


@pytest.mark.parametrize("as_tar", [False, True])
def test_load_oci_layout_applies_layers_and_keeps_config(tmp_path, store, as_tar):
    src = str(tmp_path / ("img.tar" if as_tar else "img"))
    image_id = oci_layout(src, [BASE, TOP], as_tar=as_tar,
                          cfg={"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/w", "User": "1:2",
                               "Entrypoint": ["/e"], "Volumes": {"/v": {}}, "Labels": {"a": "b"},
                               "ExposedPorts": {"80/tcp": {}}})
    [(got, names)] = store.load(src)
    assert got == image_id and names == ["docker.io/library/demo:1"]
    assert store.resolve("demo:1") == image_id  # docker.io/library/ is implied
    rc = store.runtime_config("demo:1")
    assert rc["WorkingDir"] == "/w" and rc["User"] == "1:2" and rc["Volumes"] == {"/v": {}}
    assert rc["Labels"] == {"a": "b"} and rc["ExposedPorts"] == {"80/tcp": {}} and rc["Entrypoint"] == ["/e"]
    root = store.driver.get(store.top_layer("demo:1"))
    assert open(f"{root}/etc/motd").read() == "hello\n"
    assert open(f"{root}/bin/sh").read() == "#!shell"
    assert not os.path.exists(f"{root}/old")  # whited out by the top layer
    ins = store.inspect(image_id[7:19])
    assert ins["Id"] == image_id and ins["RootFS"]["Layers"] == [sha(BASE[0]), sha(TOP[0])]
    assert ins["GraphDriver"]["Name"] == "vfs" and ins["Size"] > 0
    assert [x["Id"] for x in store.list()] == [image_id]
    assert chain_ids(ins["RootFS"]["Layers"])[-1][7:] == store.top_layer(image_id)


def test_load_docker_save_archive(tmp_path, store):
    image_id = docker_archive(str(tmp_path / "d.tar"), [BASE, TOP], tags=("demo:latest", "other/x:2"))
    [(got, names)] = store.load(str(tmp_path / "d.tar"))
    assert got == image_id and sorted(names) == ["demo:latest", "other/x:2"]
    assert store.runtime_config("demo")["Cmd"] == ["/bin/true"]


def test_layers_are_shared_between_images(tmp_path, store):
    oci_layout(str(tmp_path / "a"), [BASE], ref="a:1")
    oci_layout(str(tmp_path / "b"), [BASE, TOP], ref="b:1")
    store.load(str(tmp_path / "a"))
    store.load(str(tmp_path / "b"))
    assert len(store.driver.ids()) == 2
    store.remove("b:1")
    assert store.driver.ids() == [store.top_layer("a:1")]
    assert open(f"{store.driver.get(store.top_layer('a:1'))}/old").read() == "x"


def test_import_plain_tarball(tmp_path, store):
    p = tmp_path / "rootfs.tar.gz"
    p.write_bytes(gzip.compress(BASE[0]))
    image_id = store.import_tarball(str(p), "myroot:v1", config={"Cmd": ["/bin/sh"]})
    assert store.resolve("myroot:v1") == image_id
    assert store.inspect("myroot:v1")["RootFS"]["Layers"] == [sha(BASE[0])]
    assert store.runtime_config("myroot:v1") == {"Cmd": ["/bin/sh"]}
    assert os.path.exists(store.driver.get(store.top_layer(image_id)) + "/etc/os-release")


def test_tag_untag_remove_and_in_use(tmp_path, store):
    oci_layout(str(tmp_path / "a"), [BASE], ref="a:1")
    [(image_id, _)] = store.load(str(tmp_path / "a"))
    assert store.tag("a:1", "b") == "b:latest"
    with pytest.raises(ImageError, match="already in use"):
        store.import_tarball(io.BytesIO(TOP[0]), "b")
    store.tag(image_id[7:19], "b")  # the same image again: nothing to refuse
    c_id = store.import_tarball(io.BytesIO(TOP[0]), "c")
    with pytest.raises(ImageError, match="already in use"):
        store.tag("c", "b")
    store.tag("c", "b", replace=True)
    assert store.resolve("b") == store.resolve("c")
    assert store.remove("c") == {"Untagged": ["c:latest"], "Deleted": []}
    assert store.remove("b")["Deleted"][0] == c_id
    store.tag(image_id, "b")
    assert store.remove("b") == {"Untagged": ["b:latest"], "Deleted": []}
    with pytest.raises(ImageError, match=r"in use by container\(s\) c1, c2"):
        store.remove("a:1", in_use=lambda i: ["c1", "c2"] if i == image_id else [])
    assert store.resolve("a:1") == image_id
    out = store.remove("a:1", in_use=lambda i: [])
    assert out["Untagged"] == ["a:1"] and out["Deleted"][0] == image_id
    assert store.list() == [] and store.driver.ids() == []
    assert os.listdir(os.path.join(store.dir, "blobs", "sha256")) == []
    with pytest.raises(ImageError, match="no such image: a:1"):
        store.resolve("a:1")


def test_save_then_load_elsewhere_gives_the_same_image(tmp_path, store):
    image_id = oci_layout(str(tmp_path / "a"), [BASE, TOP], ref="demo:1")
    store.load(str(tmp_path / "a"))
    out = str(tmp_path / "saved.tar")
    store.save("demo:1", out)
    names = tarfile.open(out).getnames()
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    other = ImageStore(str(tmp_path / "root2"), driver="vfs", progress=False)
    [(got, gnames)] = other.load(out)
    assert got == image_id and gnames == ["demo:1"]
    # the docker-load manifest.json of the same archive names the same image
    other2 = ImageStore(str(tmp_path / "root3"), driver="vfs", progress=False)
    t = tarfile.open(out)
    os.makedirs(tmp_path / "x")
    for m in t:
        if m.name not in ("index.json",):
            t.extract(m, tmp_path / "x")
    assert other2.load(str(tmp_path / "x"))[0][0] == image_id


def test_commit_makes_a_new_image_from_a_layer(tmp_path, store):
    oci_layout(str(tmp_path / "a"), [BASE], ref="a:1")
    store.load(str(tmp_path / "a"))
    d = store.driver
    d.create("ctr", store.top_layer("a:1"))
    rw = d.get("ctr")
    with open(f"{rw}/etc/new", "w") as f:
        f.write("made in the container")
    os.unlink(f"{rw}/bin/sh")
    new = store.commit("ctr", "a:1", "a:2", config={"Cmd": ["/x"]}, comment="c")
    root = d.get(store.top_layer(new))
    assert open(f"{root}/etc/new").read() == "made in the container" and not os.path.exists(f"{root}/bin/sh")
    assert store.runtime_config("a:2")["Cmd"] == ["/x"]
    assert len(store.inspect("a:2")["RootFS"]["Layers"]) == 2


def _flip_last_byte(name):
    def tamper(files):
        b = bytearray(files[name])
        b[-1] ^= 1
        files[name] = bytes(b)
    return tamper


def _blob_name(blob):
    return f"blobs/sha256/{sha(blob)[7:]}"


@pytest.mark.parametrize("make, message", [
    (lambda p: oci_layout(p, [BASE], tamper=lambda f: f.pop(_blob_name(BASE[1]))), "missing blob"),
    (lambda p: oci_layout(p, [BASE], tamper=_flip_last_byte(_blob_name(BASE[1]))), "blob digest mismatch"),
    (lambda p: oci_layout(p, [BASE, TOP], cfg={"Cmd": ["x"]}, tamper=lambda f: f.update(
        {"index.json": f["index.json"].replace(b'"size": ', b'"size": 1')})), r"bytes, its descriptor says|larger"),
    (lambda p: oci_layout(p, [BASE], tamper=lambda f: f.pop("index.json")), "not an image archive"),
])
def test_bad_oci_input_is_refused_and_nothing_is_left(tmp_path, store, make, message):
    oci_layout(str(tmp_path / "good"), [layer(("keep", b"k"))], ref="good:1")
    store.load(str(tmp_path / "good"))
    before = state(store)
    make(str(tmp_path / "bad"))
    with pytest.raises(ImageError, match=message):
        store.load(str(tmp_path / "bad"))
    assert state(store) == before


def test_diff_id_mismatch_removes_the_layer(tmp_path, store):
    raw2, _ = layer(("different", b"d"))
    # a docker archive whose config names another layer content than the file holds
    config = config_for([raw2])
    cid = hashlib.sha256(config).hexdigest()
    _write(str(tmp_path / "d.tar"), {f"{cid}.json": config, "l/layer.tar": BASE[0], "manifest.json": json.dumps(
        [{"Config": f"{cid}.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]).encode()}, True)
    with pytest.raises(ImageError, match="the image config says"):
        store.load(str(tmp_path / "d.tar"))
    assert store.driver.ids() == [] and store.list() == []
    assert os.listdir(os.path.join(store.dir, "layers")) == []
    assert os.listdir(os.path.join(store.dir, "blobs", "sha256")) == []


def test_corrupt_and_truncated_archives(tmp_path, store):
    oci_layout(str(tmp_path / "a.tar"), [BASE, TOP], as_tar=True)
    data = open(tmp_path / "a.tar", "rb").read()
    (tmp_path / "trunc.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tar").write_bytes(os.urandom(5000))
    for p in ("trunc.tar", "junk.tar"):
        with pytest.raises(ImageError):
            store.load(str(tmp_path / p))
    gz = gzip.compress(BASE[0])
    (tmp_path / "trunc.tar.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        store.import_tarball(str(tmp_path / "trunc.tar.gz"), "t:1")
    assert store.list() == [] and store.driver.ids() == []
    assert os.listdir(os.path.join(store.dir, "blobs", "sha256")) == []


def test_names_and_unknown_images(store):
    assert normalize_name("busybox") == "busybox:latest"
    assert normalize_name("localhost:5000/a/b:v1.2") == "localhost:5000/a/b:v1.2"
    for bad in ("UPPER", "a b", "x:", "../x", "a:b:c:d/e"):
        with pytest.raises(ImageError, match="invalid image name"):
            normalize_name(bad)
    with pytest.raises(ImageError, match="no such image: nope"):
        store.inspect("nope")
    with pytest.raises(ImageError, match="no such image"):
        store.remove("nope")


def test_interrupted_layer_is_swept_on_next_change(tmp_path, store):
    oci_layout(str(tmp_path / "a"), [BASE], ref="a:1")
    store.load(str(tmp_path / "a"))
    # what a kill -9 during make_layer leaves: a marker and a driver layer without metadata
    store.driver.create("deadbeef")
    open(os.path.join(store.dir, "layers", "deadbeef.incomplete"), "w").close()
    store.tag("a:1", "a:2")
    assert "deadbeef" not in store.driver.ids()
    assert not os.path.exists(os.path.join(store.dir, "layers", "deadbeef.incomplete"))


def test_store_refuses_other_id_maps(tmp_path, store):
    oci_layout(str(tmp_path / "a"), [BASE], ref="a:1")
    store.load(str(tmp_path / "a"))
    m = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    other = ImageStore(store.root, driver="vfs", uid_map=m, gid_map=m, progress=False)
    with pytest.raises(ImageError, match="made for id maps"):
        other.tag("a:1", "b")


def test_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KETCH_STORAGE_ROOT", str(tmp_path / "envroot"))
    assert ImageStore(progress=False).root == str(tmp_path / "envroot")
