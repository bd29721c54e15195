"""Many ketch commands at once (issue 18): no corruption, no deadlock, each
caller told the truth.  Used by tests/integration/test_concurrency.py
(bounded) and ``make stress`` (the issue's full numbers):

    python tests/reliability/concurrency.py [--same 50] [--creates 100]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import faults  # noqa: E402  (Env: scratch root, bundle, engine storage)
import leaks  # noqa: E402


def _run_all(env, argvs, timeout=120):
    """Start every command at once; [(argv, CompletedProcess)]."""
    def one(argv):
        return argv, env.call(argv, timeout=timeout)

    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        return list(pool.map(one, argvs))


def _one_error_line(p):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return "Traceback" not in p.stderr and len(lines) == 1 and lines[0].startswith("ketch: ")


def same_container(env, n=50):
    """``n`` kill / delete --force / state / exec on one running container at once."""
    cid = env.new_id("same")
    env.sh("run", "-d", "-b", env.bundle, cid)
    kinds = ["state", "exec", "kill", "delete"]
    argvs = []
    for i in range(n):
        k = kinds[i % len(kinds)]
        argvs.append({"state": env.argv("state", cid),
                      "exec": env.argv("exec", cid, "sh", "-c", "echo alive"),
                      "kill": env.argv("kill", cid, "KILL"),
                      "delete": env.argv("delete", "--force", cid)}[k])
    t0 = time.monotonic()
    results = _run_all(env, argvs)
    took = time.monotonic() - t0
    problems = []
    for argv, p in results:
        verb = argv[3]
        if "Traceback" in p.stderr:
            problems.append(f"{verb}: traceback {p.stderr[-400:]!r}")
            continue
        if verb == "delete":
            if p.returncode != 0:
                problems.append(f"delete --force failed: {p.stderr.strip()!r}")
        elif p.returncode == 0:
            if verb == "state":
                st = json.loads(p.stdout)
                if st["id"] != cid or st["status"] not in ("running", "stopped"):
                    problems.append(f"state said {st}")
            elif verb == "exec" and p.stdout != "alive\n":
                # The exec ran; a kill may end it before it prints (137).
                problems.append(f"exec succeeded but printed {p.stdout!r}")
        elif verb == "exec" and p.returncode == 137 and not p.stderr.strip():
            # The exec'd process was killed by a concurrent `kill KILL`: as with runc, exec
            # exits with the process's own status (128 + 9) and has nothing to complain about.
            pass
        else:
            if not _one_error_line(p):
                problems.append(f"{verb} rc={p.returncode}: want one error line, got {p.stderr.strip()!r}")
            elif verb == "exec" and p.returncode == 137:
                pass
            elif not any(w in p.stderr for w in ("does not exist", "not running", "stopped", "not found",
                                                 "killed", "exited")):
                problems.append(f"{verb} rc={p.returncode}: unexpected error {p.stderr.strip()!r}")
    left = env.leaks([cid])
    if left:
        problems.append(f"left {left}")
        env.scrub([cid])
    return took, problems


def many_creates(env, n=100):
    """``n`` creates with different ids at once; all listed as created; all deleted at once."""
    ids = [env.new_id("many") for _ in range(n)]
    t0 = time.monotonic()
    results = _run_all(env, [env.argv("create", "-b", env.bundle, i) for i in ids])
    took = time.monotonic() - t0
    problems = [f"create {a[-1]} rc={p.returncode}: {p.stderr.strip()!r}" for a, p in results if p.returncode]
    listed = json.loads(env.sh("list", "-f", "json").stdout or "[]") or []
    st = {c["id"]: c["status"] for c in listed}
    for i in ids:
        if st.get(i) != "created":
            problems.append(f"{i}: listed as {st.get(i)!r}, want created")
    dels = _run_all(env, [env.argv("delete", i) for i in ids])
    problems += [f"delete {a[-1]} rc={p.returncode}: {p.stderr.strip()!r}" for a, p in dels if p.returncode]
    left = env.leaks(ids)
    if left:
        problems.append(f"left {left}")
        env.scrub(ids)
    return took, problems


def _docker_save(env):
    """A `docker save` archive of the busybox layer, tagged fuzz/img:1."""
    import hashlib
    import fuzz

    path = os.path.join(env.base, "saved.tar")
    if not os.path.exists(path):
        with open(env.tar, "rb") as f:
            layer = f.read()
        cfg, manifest = fuzz.docker_save_parts(layer)
        cfg_bytes = json.dumps(cfg).encode()
        cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
        manifest[0]["Config"] = cfg_name
        with open(path, "wb") as f:
            f.write(fuzz._tar({cfg_name: cfg_bytes, "l/layer.tar": layer,
                               "manifest.json": json.dumps(manifest).encode()}))
    return path


def engine_import_twice(env):
    """The same image twice at once: a `docker save` archive loaded twice
    (content-addressed: both succeed, one image); a tarball imported twice
    under one name (each import is a new image: one wins, the other is told
    the name is taken)."""
    problems = []
    saved = _docker_save(env)
    results = _run_all(env, [env.argv("image", "load", "-i", saved)] * 2)
    problems += [f"load rc={p.returncode}: {p.stderr.strip()!r}" for _, p in results if p.returncode]
    ls = env.sh("image", "ls", "-q", "--no-trunc").stdout.split()
    if len(ls) != 1 + env._image:
        problems.append(f"two loads of one archive: image ls {ls}")
    problems += faults.storage_problems(env.storage)
    env.sh("image", "rm", "fuzz/img:1", check=False)

    tag = env.new_id("twice") + ":1"
    results = _run_all(env, [env.argv("image", "import", env.tar, tag)] * 2)
    ok = [p for _, p in results if p.returncode == 0]
    failed = [p for _, p in results if p.returncode != 0]
    if len(ok) != 1:
        problems.append(f"two imports under one name: {len(ok)} succeeded: "
                        f"{[p.stderr.strip() for _, p in results]}")
    for p in failed:
        if not _one_error_line(p) or "already in use" not in p.stderr:
            problems.append(f"the losing import said {p.stderr.strip()!r}")
    if ok:
        iid = env.sh("image", "inspect", tag).stdout
        if ok[0].stdout.strip().split(":")[-1][:12] not in iid:
            problems.append(f"{tag} is not the image the winner reported ({ok[0].stdout.strip()})")
    problems += faults.storage_problems(env.storage)
    env.sh("image", "rm", tag, check=False)
    return problems


def registry():
    """A docker-registry on a free loopback port (tests/integration/test_registry.py's)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
    from test_registry import Registry

    return Registry(tempfile.mkdtemp(prefix="ketch-stress-reg-", dir=_base()))


def _base():
    return os.environ.get("TMPDIR", "/tmp")


def stop_registry(reg):
    import shutil

    reg.stop()
    shutil.rmtree(reg.base, ignore_errors=True)


def engine_pull_twice(env, reg, rounds=2):
    """The same image pulled twice at once into an empty store: both succeed
    and say the same, the store holds it once, nothing half-written, and
    `system check` passes."""
    import shutil

    env.ensure_image()
    problems = []
    ref = f"{reg.host}/stress/bb:1"
    env.sh("image", "tag", "bb:latest", ref)
    env.sh("image", "push", "-q", "--tls-verify=false", ref)
    env.sh("image", "rm", ref)
    main = env.storage
    try:
        for i in range(rounds):
            env.storage = f"{main}-pull{i}"
            results = _run_all(env, [env.argv("image", "pull", "-q", "--tls-verify=false", ref)] * 2)
            outs = set()
            for _, p in results:
                if p.returncode:
                    problems.append(f"pull rc={p.returncode}: {p.stderr.strip()!r}")
                outs.add(p.stdout.strip())
            if len(outs) != 1:
                problems.append(f"the two pulls said {outs}")
            ls = env.sh("image", "ls", "-q", "--no-trunc").stdout.split()
            if len(ls) != 1:
                problems.append(f"two pulls of one image: image ls {ls}")
            problems += faults.storage_problems(env.storage)
            chk = env.sh("system", "check", check=False)
            if chk.returncode:
                problems.append(f"system check after two pulls: {chk.stdout.strip()!r} {chk.stderr.strip()!r}")
            shutil.rmtree(env.storage, ignore_errors=True)
    finally:
        env.storage = main
    return problems


def engine_rm_races_run(env, rounds=3):
    env.ensure_image()
    problems = []
    for _ in range(rounds):
        name = env.new_id("race")
        run, rm = [p for _, p in _run_all(env, [
            env.argv("container", "run", "-d", "--name", name, "bb", "sleep", "300"),
            env.argv("container", "rm", "-f", name)])]
        for what, p in (("run", run), ("rm", rm)):
            if p.returncode and not _one_error_line(p):
                problems.append(f"{what} rc={p.returncode}: {p.stderr.strip()!r}")
        present = env.sh("container", "inspect", name, check=False).returncode == 0
        # The truth: if rm said it removed the container, it is gone; if the
        # run said it started one and rm did not remove it, it is there.
        if rm.returncode == 0 and present and run.returncode == 0:
            # rm may have run before the name existed (then it must have failed).
            problems.append(f"rm said it removed {name} but it is still there")
        if run.returncode == 0 and rm.returncode != 0 and not present:
            problems.append(f"run started {name}, rm failed, yet it is gone")
        env.sh("container", "rm", "-f", name, check=False)
    left = env.leaks([])
    if left:
        problems.append(f"left {left}")
    return problems


def engine_stop_races_exit(env, rounds=3):
    env.ensure_image()
    problems = []
    for _ in range(rounds):
        name = env.new_id("exit")
        env.sh("container", "run", "-d", "--name", name, "bb", "sh", "-c", "sleep 0.3; exit 3")
        time.sleep(0.25)
        p = env.sh("container", "stop", "-t", "2", name, check=False)
        if p.returncode and not _one_error_line(p):
            problems.append(f"stop rc={p.returncode}: {p.stderr.strip()!r}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            insp = json.loads(env.sh("container", "inspect", name).stdout)[0]
            if not insp["State"]["Running"]:
                break
            time.sleep(0.05)
        else:
            problems.append(f"{name} still running 10 s after stop")
        code = insp["State"]["ExitCode"]
        if code not in (3, 143, 137):
            problems.append(f"{name}: exit code {code}, want 3 (own exit) or 143/137 (stopped)")
        env.sh("container", "rm", name, check=False)
    left = env.leaks([])
    if left:
        problems.append(f"left {left}")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--same", type=int, default=50)
    ap.add_argument("--creates", type=int, default=100)
    a = ap.parse_args()
    leaks.own_network_namespace()
    env = faults.Env()
    bad = 0
    try:
        took, p = same_container(env, a.same)
        print(f"{a.same} kill/delete/state/exec at once on one container: {took:.1f} s, problems: {p or 'none'}")
        bad += len(p)
        took, p = many_creates(env, a.creates)
        print(f"{a.creates} creates at once: {took:.1f} s, problems: {p or 'none'}")
        bad += len(p)
        reg = registry()
        try:
            p = engine_pull_twice(env, reg, rounds=5)
        finally:
            stop_registry(reg)
        print(f"image pulled twice at once (5 rounds): problems: {p or 'none'}")
        bad += len(p)
        for name, fn in (("image imported twice at once", engine_import_twice),
                         ("container rm racing container run", engine_rm_races_run),
                         ("container stop racing the container's exit", engine_stop_races_exit)):
            p = fn(env)
            print(f"{name}: problems: {p or 'none'}")
            bad += len(p)
    finally:
        env.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
