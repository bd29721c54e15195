"""Fuzzing with hypothesis (issue 18): config.json, the command line, image
archives.  A small budget here (KETCH_FUZZ_EXAMPLES, default 40 a target;
`make fuzz` runs 500): never a traceback, one error line, nothing left."""

import json
import os
import sys
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import faults  # noqa: E402
import fuzz  # noqa: E402
from ketch.spec.default import default_spec  # noqa: E402

EXAMPLES = int(os.environ.get("KETCH_FUZZ_EXAMPLES", 40))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize="KETCH_FUZZ_RANDOM" not in os.environ,
                    suppress_health_check=list(HealthCheck), database=None)

# The traffic rule: engine containers join the default bridge, which must
# live in a network namespace of the test's own (conftest.testns_module).
pytestmark = pytest.mark.usefixtures("testns_module")


@pytest.fixture(scope="module")
def env():
    e = faults.Env()
    yield e
    e.close()


BASE = default_spec(terminal=False)
BASE["root"] = {"path": "rootfs", "readonly": False}
BASE["process"]["args"] = ["true"]


def test_mutated_config_json(env):
    bundle = os.path.join(env.base, "fuzzbundle")
    os.makedirs(bundle, exist_ok=True)
    if not os.path.exists(os.path.join(bundle, "rootfs")):
        os.symlink(os.path.join(env.bundle, "rootfs"), os.path.join(bundle, "rootfs"))

    @SETTINGS
    @given(fuzz.mutated_config(BASE))
    def case(cfg):
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        cid = env.new_id("fz")
        p = env.sh("create", "-b", bundle, cid, check=False)
        problems = fuzz.check_output(p)
        if p.returncode != 0:
            left = env.leaks([cid], grace=1.0)
            if left:
                problems.append(f"a failed create left {left}")
        d = env.sh("delete", "--force", cid, check=False)
        problems += [f"delete --force: {x}" for x in fuzz.check_output(d)]
        left = env.leaks([cid], grace=1.0)
        if left:
            problems.append(f"delete --force left {left}")
            env.scrub([cid])
        assert not problems, f"config {json.dumps(cfg)[:3000]}:\n" + "\n".join(problems)

    case()


def test_command_lines(env):
    cwd = tempfile.mkdtemp(dir=env.base)

    @SETTINGS
    @given(fuzz.ARGV)
    def case(argv):
        verb, rest = argv
        p = env.call([env.ketch, "--root", env.root, verb, *rest], timeout=30)
        problems = fuzz.check_output(p)
        left = env.leaks([], grace=1.0)
        if left:
            problems.append(f"left {left}")
            env.rm_engine_containers()
            env.scrub([])
        for n in os.listdir(env.root):
            env.sh("delete", "--force", n, check=False)
        assert not problems, f"ketch {verb} {rest!r}:\n" + "\n".join(problems)

    old = os.getcwd()
    os.chdir(cwd)
    try:
        case()
    finally:
        os.chdir(old)


def test_image_archives(env):
    with open(env.tar, "rb") as f:
        layer = f.read()
    path = os.path.join(env.base, "fuzz-archive.tar")

    @SETTINGS
    @given(fuzz.mutated_archive(fuzz.Layer(layer)))
    def case(data):
        with open(path, "wb") as f:
            f.write(data)
        p = env.sh("image", "load", "-i", path, check=False)
        problems = fuzz.check_output(p)
        ls = env.sh("image", "ls", check=False)
        problems += [f"image ls after: {x}" for x in fuzz.check_output(ls)]
        if ls.returncode != 0:
            problems.append(f"image ls failed after the load: {ls.stderr.strip()!r}")
        problems += faults.storage_problems(env.storage)
        env.sh("image", "rm", "-f", "fuzz/img:1", check=False)
        assert not problems, "\n".join(problems)

    case()
