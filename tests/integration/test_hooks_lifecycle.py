"""OCI hooks through real containers: every phase's side effects, their order,
the namespace each runs in, the state on stdin, env/args/timeout, and what a
failing hook does to the operation; runc on the same bundle for comparison."""

import json
import os
import subprocess
import time

import pytest

from conftest import wait_for

BUSYBOX = "/bin/busybox"  # on the host and, copied, in the busybox rootfs

# Appends "<phase> <pid> <status> <mnt ns>" to the log and keeps the whole state.
RECORD = r'''s=$(cat)
pid=$(echo "$s" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
st=$(echo "$s" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p')
echo "$1 $pid $st $(readlink /proc/self/ns/mnt)" >> "$2"
echo "$s" > "$2.$1.json"
'''
PHASES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def hook(script, *args, **extra):
    return dict({"path": BUSYBOX, "args": ["sh", "-c", script, "hook", *args]}, **extra)


def recording_bundle(b):
    """Every phase records itself; the user's process records itself after poststart."""
    host_log = os.path.join(b.path, b.config["root"]["path"], "hooks.log")
    b.config["hooks"] = {
        phase: [hook(RECORD, phase, "/hooks.log" if phase == "startContainer" else host_log)]
        for phase in PHASES}
    # Waiting for poststart makes the order deterministic: the spec runs
    # poststart after the user process has started, not after it has finished.
    b.sh("i=0; until grep -q poststart /hooks.log || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; "
         "echo \"process $$ running $(readlink /proc/self/ns/mnt)\" >> /hooks.log")
    b.config["annotations"] = {"org.ketch.test": "hooks"}
    b.write()
    return host_log


def read_log(path):
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


def mnt_ns(pid="self"):
    return os.readlink(f"/proc/{pid}/ns/mnt")


def test_every_phase_in_order_in_its_namespace(ketch, own_bundle, cid):
    log = recording_bundle(own_bundle)
    ketch("create", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = ketch.state(cid)["pid"]
    container_ns, host_ns = mnt_ns(pid), mnt_ns()
    assert container_ns != host_ns
    # create ran exactly the creation hooks, in the spec's order.
    assert [e[0] for e in read_log(log)] == ["prestart", "createRuntime", "createContainer"]
    ketch("start", cid)
    assert wait_for(lambda: ketch.status(cid) == "stopped")
    ketch("delete", cid)
    entries = read_log(log)
    assert [e[0] for e in entries] == ["prestart", "createRuntime", "createContainer",
                                       "startContainer", "poststart", "process", "poststop"]
    got = {e[0]: e[1:] for e in entries}
    assert got["prestart"] == [str(pid), "created", host_ns]  # as crun (issue 13)
    assert got["createRuntime"] == [str(pid), "creating", host_ns]
    # Hooks run by the init see its pid in their own pid namespace (runc: same).
    assert got["createContainer"] == ["1", "creating", container_ns]
    assert got["startContainer"] == ["1", "created", container_ns]
    assert got["poststart"] == [str(pid), "running", host_ns]
    assert got["process"] == ["1", "running", container_ns]
    assert got["poststop"][1:] == ["stopped", host_ns]
    for phase in PHASES:
        with open(f"{log}.{phase}.json" if phase != "startContainer" else log + ".startContainer.json") as f:
            st = json.load(f)
        assert st["id"] == cid and st["bundle"] == own_bundle.path, (phase, st)
        assert st["annotations"] == {"org.ketch.test": "hooks"}, (phase, st)
        assert st["ociVersion"]
    assert ketch.ids() == []


def test_hook_order_and_states_compared_with_runc(ketch, runc, own_bundle, cid):
    """runc 1.1.5 runs poststart already during `create` (state "created");
    the spec, and ketch, run it after the user process has started.  ketch's
    prestart state says "created" as crun's (runc: "creating").  runc's
    poststop state has no pid; ketch's keeps the last one."""
    log = recording_bundle(own_bundle)
    seen = {}
    for rt in (ketch, runc):
        if os.path.exists(log):
            os.unlink(log)
        rt("create", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at_create = [e[0] for e in read_log(log)]
        rt("start", cid)
        assert wait_for(lambda: rt.status(cid) == "stopped")
        rt("delete", cid)
        states = {}
        for phase in PHASES:
            with open(f"{log}.{phase}.json") as f:
                states[phase] = json.load(f)
        seen[rt.name] = (at_create, [e[0] for e in read_log(log)], states)
    k_create, k_order, k_states = seen["ketch"]
    r_create, r_order, r_states = seen["runc"]
    assert r_create == k_create + ["poststart"]
    assert [p for p in r_order if p != "poststart"] == [p for p in k_order if p != "poststart"]
    assert r_states["poststart"]["status"] == "created" and k_states["poststart"]["status"] == "running"
    for phase in PHASES:
        k, r = k_states[phase], r_states[phase]
        if phase == "prestart":  # "created" as crun (test_runc_parity)
            assert (k["status"], r["status"]) == ("created", "creating")
        elif phase != "poststart":
            assert k["status"] == r["status"], phase
        if phase in ("createContainer", "startContainer"):
            assert k["pid"] == r["pid"] == 1, phase
        for key in ("id", "bundle", "annotations"):
            assert k[key] == r[key], (phase, key)
    assert "pid" not in r_states["poststop"]


def test_hook_env_args_and_stdout(ketch, bundle, tmp_path, cid):
    out = tmp_path / "env"
    bundle.sh("true")
    bundle.config["hooks"] = {"prestart": [
        {"path": BUSYBOX, "args": ["sh", "-c", 'tr "\\0" "\\n" < /proc/$$/environ > "$1"; echo "$0|$1|$A|$B" > "$1.args"', "named", str(out)],
         "env": ["A=1", "B=two words"]},
        # A hook without env gets the runtime's environment (runc does the same).
        hook('echo "$KETCH_HOOK_TEST" > "$1"', str(tmp_path / "inherited"))]}
    bundle.write()
    env = dict(os.environ, KETCH_HOOK_TEST="from-runtime")
    p = subprocess.run(ketch.cmd("run", "-b", bundle.path, cid), env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "env.args").read_text() == f"named|{out}|1|two words\n"
    # Exactly the hook's env, nothing of the runtime's.
    assert sorted(out.read_text().splitlines()) == ["A=1", "B=two words"]
    assert (tmp_path / "inherited").read_text() == "from-runtime\n"


def test_hook_timeout_fails_create_and_leaves_nothing(ketch, bundle, tmp_path, cid):
    bundle.sh("true")
    bundle.config["hooks"] = {"createRuntime": [hook("sleep 30", timeout=1)]}
    bundle.write()
    t0 = time.monotonic()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert time.monotonic() - t0 < 10
    assert p.returncode != 0
    assert "createRuntime" in p.stderr and "timed out" in p.stderr, p.stderr
    assert ketch.ids() == []


def test_missing_hook_binary_fails_create(ketch, bundle, cid):
    bundle.sh("true")
    bundle.config["hooks"] = {"prestart": [{"path": "/nonexistent/ketch-hook"}]}
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "/nonexistent/ketch-hook" in p.stderr, p.stderr
    assert ketch.ids() == []


FAIL = 'echo "boom from $1" >&2; exit 3'


@pytest.mark.parametrize("phase", ["prestart", "createRuntime", "createContainer"])
def test_failing_creation_hook_fails_create(ketch, runc, own_bundle, cid, phase):
    marker = os.path.join(own_bundle.path, "rootfs", "ran")
    own_bundle.sh("touch /ran")
    own_bundle.config["hooks"] = {phase: [hook(FAIL, phase)]}
    own_bundle.write()
    p = ketch("create", "-b", own_bundle.path, cid, check=False)
    assert p.returncode != 0
    assert f"boom from {phase}" in p.stderr and "exit status 3" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert ketch.ids() == []
    r = runc("create", "-b", own_bundle.path, cid, check=False)
    assert r.returncode != 0 and runc.ids() == []
    assert not os.path.exists(marker)


def test_failing_start_container_hook_stops_the_container(ketch, runc, own_bundle, tmp_path, cid):
    """`start` only releases the init, which runs startContainer hooks after
    that: as with runc, `start` succeeds, the container ends up stopped
    without running the user's program, and the hook's stderr is on the
    container's stderr."""
    marker = os.path.join(own_bundle.path, "rootfs", "ran")
    own_bundle.sh("touch /ran")
    own_bundle.config["hooks"] = {"startContainer": [hook(FAIL, "startContainer")]}
    own_bundle.write()
    for rt in (ketch, runc):
        errfile = tmp_path / f"{rt.name}.stderr"
        with open(errfile, "w") as err:
            rt("create", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=err)
        rt("start", cid)
        assert wait_for(lambda: rt.status(cid) == "stopped"), rt.name
        assert "boom from startContainer" in wait_for(errfile.read_text), rt.name
        assert not os.path.exists(marker)
        rt("delete", cid)
        assert rt.ids() == []
    text = (tmp_path / "ketch.stderr").read_text()
    assert "startContainer hook #0" in text and "exit status 3" in text, text


def test_failing_poststart_hook_is_a_warning(ketch, bundle, cid):
    bundle.sh("sleep 100")
    bundle.config["hooks"] = {"poststart": [hook(FAIL, "poststart"), hook("true")]}
    bundle.write()
    ketch("create", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = ketch("start", cid)
    assert "boom from poststart" in p.stderr and "warning" in p.stderr.lower(), p.stderr
    assert ketch.status(cid) == "running"
    ketch("delete", "--force", cid)


def test_failing_poststop_hook_is_a_warning(ketch, bundle, tmp_path, cid):
    after = tmp_path / "second-poststop"
    bundle.sh("true")
    bundle.config["hooks"] = {"poststop": [hook(FAIL, "poststop"), hook('touch "$1"', str(after))]}
    bundle.write()
    p = ketch("run", "-b", bundle.path, cid)
    assert "boom from poststop" in p.stderr, p.stderr
    # The remaining hooks still run, and nothing is left.
    assert after.exists()
    assert ketch.ids() == []
