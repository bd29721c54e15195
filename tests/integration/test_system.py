"""`ketch system check [--repair]`, `system df`, `system prune` (issue 18): the
store verified against the disk, damaged here by hand the ways a killed
command or a bad disk leaves it, repaired, and still working after."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import faults  # noqa: E402

# Engine containers here take the default bridge: it, its iptables rules and ip_forward
# live in a network namespace of the test's own (conftest.testns), never the host's.
pytestmark = pytest.mark.usefixtures("testns")


@pytest.fixture
def env():
    e = faults.Env()
    yield e
    e.close()


def check(env, *flags):
    p = env.sh("system", "check", *flags, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def kinds(p):
    return {line.split(": ")[1] for line in p.stdout.splitlines() if ": " in line and not line.startswith("ok")}


def test_a_working_store_passes_and_df_counts_it(env):
    env.ensure_image()
    name = env.new_id("sys")
    env.sh("container", "run", "-d", "--name", name, "bb", "sleep", "300")
    env.sh("container", "create", "--name", name + "-stopped", "bb", "true")
    p = check(env)
    assert p.returncode == 0 and "ok: the store is consistent" in p.stdout, p.stdout + p.stderr
    rows = {r["Type"]: r for r in json.loads(env.sh("system", "df", "--format", "json").stdout)}
    assert rows["Images"]["TotalCount"] == 1 and rows["Images"]["Active"] == 1
    assert rows["Containers"]["TotalCount"] == 2 and rows["Containers"]["Active"] == 1
    assert rows["Images"]["Size"] > 100_000  # busybox's layer and blob
    text = env.sh("system", "df").stdout.splitlines()
    assert text[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"] and len(text) == 5
    env.sh("container", "rm", "-f", name, name + "-stopped")


def _layers(env):
    return sorted(n[:-5] for n in os.listdir(os.path.join(env.storage, "images", "layers")) if n.endswith(".json"))


def test_check_finds_what_a_crash_or_a_bad_disk_leaves_and_repair_fixes_it(env):
    env.ensure_image()
    img = os.path.join(env.storage, "images")
    # A second image with a layer of its own, whose layer directory will go.
    extra = os.path.join(env.base, "extra.tar")
    subprocess.run(["tar", "-C", os.path.join(env.bundle, "rootfs"), "-cf", extra, "bin/busybox", "etc"],
                   check=True)
    env.sh("image", "import", extra, "broken:1")
    broken_id = json.loads(env.sh("image", "inspect", "broken:1").stdout)[0]["Id"]
    good_id = json.loads(env.sh("image", "inspect", "bb:latest").stdout)[0]["Id"]
    broken_layer = json.load(open(os.path.join(img, "db", broken_id[7:] + ".json")))["layers"][-1]["chainID"][7:]
    driver = open(os.path.join(env.storage, "storage-driver")).read().strip()
    layer_dir = os.path.join(env.storage, driver, "dir" if driver == "vfs" else "", broken_layer)
    subprocess.run(["rm", "-rf", layer_dir], check=True)
    # A blob whose content no longer matches its name (bit rot), an orphan temp blob,
    # a half-made import's scratch, a layer marker of a killed import, a dangling name.
    blobs = os.path.join(img, "blobs", "sha256")
    victim = sorted(n for n in os.listdir(blobs) if n != good_id[7:] and n != broken_id[7:]
                    and os.path.getsize(os.path.join(blobs, n)) > 1000)[0]
    with open(os.path.join(blobs, victim), "ab") as f:
        f.write(b"rot")
    open(os.path.join(blobs, ".tmp-killed"), "w").close()
    os.makedirs(os.path.join(img, "tmp", "import-killed"))
    open(os.path.join(img, "layers", "ab" * 32 + ".incomplete"), "w").close()
    repos = json.load(open(os.path.join(img, "repositories.json")))
    repos["ghost:1"] = "sha256:" + "cd" * 32
    json.dump(repos, open(os.path.join(img, "repositories.json"), "w"))
    # Containers: one whose layer is gone, a half-made one, a dangling name, and a
    # stopped one whose layer is still mounted.
    lost, stopped = env.new_id("lost"), env.new_id("stopped")
    env.sh("container", "create", "--name", lost, "bb", "true")
    env.sh("container", "create", "--name", stopped, "bb", "true")
    lost_id = json.loads(env.sh("container", "inspect", lost).stdout)[0]["Id"]
    stopped_id = json.loads(env.sh("container", "inspect", stopped).stdout)[0]["Id"]
    cdir = os.path.join(env.storage, "containers")
    subprocess.run(["rm", "-rf", os.path.join(env.storage, driver, "dir" if driver == "vfs" else "", lost_id)],
                   check=True)
    half = "ef" * 32
    os.makedirs(os.path.join(cdir, half))
    os.symlink("12" * 32, os.path.join(cdir, "names", "nobody"))
    mp = os.path.join(env.storage, driver, stopped_id, "merged") if driver == "overlay" else None
    if mp:
        os.makedirs(mp, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mp], check=True)

    p = check(env)
    assert p.returncode == 1 and "problem(s) in the store" in p.stderr, p.stdout + p.stderr
    found = kinds(p)
    want = {"layer-missing", "image-broken", "blob-corrupt", "blob-temp", "import-temp", "layer-incomplete",
            "name-dangling", "container-layer-missing", "container-half-made", "container-name-dangling"}
    if mp:
        want.add("mount-leftover")
    assert want <= found, (want - found, p.stdout)
    report = json.loads(env.sh("system", "check", "--format", "json", check=False).stdout)
    assert all({"kind", "object", "detail", "repairable", "repaired"} <= set(r) for r in report)

    r = check(env, "--repair")
    assert "Traceback" not in r.stderr
    # The corrupt blob was one of bb's layer blobs or the broken image's: the store
    # drops it; an image that needs it to be saved is reported, not destroyed.
    after = check(env)
    leftover = kinds(after) - {"blob-missing"}
    assert not leftover, after.stdout + after.stderr
    assert env.sh("image", "inspect", "broken:1", check=False).returncode != 0
    assert env.sh("container", "inspect", lost, check=False).returncode != 0
    assert not os.path.exists(os.path.join(cdir, half))
    if mp:
        assert not os.path.ismount(mp)
    # What was fine still works.
    out = env.sh("container", "run", "--rm", "bb", "sh", "-c", "echo still-fine").stdout
    assert out == "still-fine\n"
    env.sh("container", "rm", "-f", stopped)


def test_prune_removes_stopped_containers_and_dangling_images(env):
    env.ensure_image()
    keep, gone = env.new_id("keep"), env.new_id("gone")
    env.sh("container", "run", "-d", "--name", keep, "bb", "sleep", "300")
    env.sh("container", "run", "--name", gone, "bb", "true")
    etc = os.path.join(env.base, "etc.tar")
    subprocess.run(["tar", "-C", os.path.join(env.bundle, "rootfs"), "-cf", etc, "etc"], check=True)
    env.sh("image", "import", etc, "tmp:1")
    env.sh("image", "tag", "tmp:1", "tmp:2")
    env.sh("image", "rm", "tmp:1")
    before = {r["Type"]: r for r in json.loads(env.sh("system", "df", "--format", "json").stdout)}
    p = env.sh("system", "prune", "-f")
    assert "Deleted Containers:" in p.stdout and "Total reclaimed space:" in p.stdout, p.stdout
    assert env.sh("container", "inspect", gone, check=False).returncode != 0
    assert env.sh("container", "inspect", keep).returncode == 0
    # tmp:2 is still tagged: only --all removes an unused tagged image.
    assert env.sh("image", "inspect", "tmp:2").returncode == 0
    env.sh("system", "prune", "-a", "-f")
    assert env.sh("image", "inspect", "tmp:2", check=False).returncode != 0
    assert env.sh("image", "inspect", "bb:latest").returncode == 0  # in use by `keep`
    after = {r["Type"]: r for r in json.loads(env.sh("system", "df", "--format", "json").stdout)}
    assert after["Containers"]["TotalCount"] == before["Containers"]["TotalCount"] - 1
    assert after["Images"]["TotalCount"] == before["Images"]["TotalCount"] - 1
    assert check(env).returncode == 0
    env.sh("container", "rm", "-f", keep)


def test_check_of_a_missing_store_makes_nothing(env):
    p = env.sh("system", "check", check=False)
    assert p.returncode == 0 and not os.path.exists(env.storage), p.stdout + p.stderr
    p = env.sh("system", "bogus", check=False)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
