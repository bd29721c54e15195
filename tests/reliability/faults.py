"""Kill or fail ketch at a chosen system call, deterministically, and check
that nothing is left that the next command cannot repair (issue 18).

A scenario is one traced ketch command (``create``, ``run -d``, ``exec``,
``container run --rm`` ...) with an untraced setup before it and a repair
after it (``delete --force``, or the engine's next command).  A first,
clean run under ``strace -o`` lists the command's system calls (its own
process only: stage-1 and the init are its children and not traced, so
"ketch killed" means the ketch process the user ran).  strace counts an
injection's ``when=`` per system call name, so the k-th call overall is
named as (name, occurrence) and injected with ``--inject=NAME:...:when=OCC``.

    kill   SIGKILL at that call; then the repair; then nothing may be left
    error  the call fails with an errno fitting it (ENOSPC, EIO, ENOMEM on
           writes, mkdirs, mounts, renames, fsyncs, forks; EINTR on blocking
           calls, which must be retried: the command then succeeds); the
           command must fail with one "ketch: ..." line and no traceback,
           create/run must have rolled back before the repair runs

    python tests/reliability/faults.py [--mode kill|error] [--scenario NAME ...] [--all | --sample N] [--seed S]

(``make faults`` runs every call of every scenario in both modes.)
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, HERE)

import leaks  # noqa: E402

KETCH = os.environ.get("KETCH") or os.path.join(REPO, ".venv", "bin", "ketch")
STRACE = shutil.which("strace") or "/usr/bin/strace"

# errno names per system call, for the error mode (the first fitting one is
# used for a point, rotating by occurrence so each name gets each errno).
# EINTR too: a write the kernel interrupts before any byte went is retried
# (PEP 475 for os.write; the ctypes wrappers retry it themselves).
_WRITE_ERRS = ("ENOSPC", "EIO", "EINTR", "ENOMEM")
ERRORS = {
    "write": _WRITE_ERRS, "pwrite64": _WRITE_ERRS, "writev": _WRITE_ERRS,
    "fsync": ("EIO", "ENOSPC"), "fdatasync": ("EIO", "ENOSPC"),
    "mkdir": ("ENOSPC", "ENOMEM", "EIO"), "mkdirat": ("ENOSPC", "ENOMEM", "EIO"),
    "mknodat": ("ENOSPC", "EIO"), "mknod": ("ENOSPC", "EIO"),
    "rename": ("ENOSPC", "EIO"), "renameat": ("ENOSPC", "EIO"), "renameat2": ("ENOSPC", "EIO"),
    "symlink": ("ENOSPC", "EIO"), "symlinkat": ("ENOSPC", "EIO"),
    "mount": ("ENOMEM", "EIO", "ENOSPC"), "umount2": ("EIO",),
    "clone": ("EAGAIN", "ENOMEM"), "clone3": ("EAGAIN", "ENOMEM"), "fork": ("EAGAIN", "ENOMEM"),
    "vfork": ("EAGAIN", "ENOMEM"),
    "socketpair": ("ENOMEM",), "pipe2": ("ENOMEM",),
    # Blocking calls the kernel may interrupt: the caller retries (PEP 475).
    # Not read(): most reads here are of regular files, which the kernel
    # never interrupts (and the dynamic loader, before ketch runs, does not
    # retry: the first exhaustive run "found" exactly that).
    "wait4": ("EINTR",), "waitid": ("EINTR",), "recvmsg": ("EINTR",), "recvfrom": ("EINTR",),
    "poll": ("EINTR",), "ppoll": ("EINTR",), "flock": ("EINTR",), "clock_nanosleep": ("EINTR",),
    "select": ("EINTR",), "pselect6": ("EINTR",),
}
# Every fork and spawn of a process retries EAGAIN (ketch.linux.eagain): the
# runtime's own forks and the programs the runtime and the engine start (a
# thread's clone is not one of them).
_FORKS = ("clone", "clone3", "fork", "vfork")
# openat / open only when they create or write (a read of a module is not
# what this harness is about).
_OPEN_WRITE = re.compile(r"O_(WRONLY|RDWR|CREAT)")
_OPEN_ERRS = ("ENOSPC", "ENOMEM", "EIO")
_LINE = re.compile(r"^([a-z0-9_]+)\(")


def errnos_for(name, line, child=False):
    if name in ("openat", "open"):
        return _OPEN_ERRS if _OPEN_WRITE.search(line) else ()
    if child:
        return CHILD_ERRORS.get(name, ())
    return ERRORS.get(name, ())


# The forked children (stage-1, the init) of create / run / exec, traced
# with ``strace -f``: the root filesystem's mounts, mkdirs and device
# nodes, the namespaces, the init's fork, its writes to /proc and the sync
# socket.  A failure there must reach the user as one line naming the
# step, and the parent must roll everything back.
CHILD_ERRORS = dict(ERRORS)
CHILD_ERRORS.update({
    "mount": ("ENOMEM", "EIO", "ENOSPC"), "umount2": ("EIO", "ENOMEM"),
    "mount_setattr": ("ENOMEM", "EIO"), "move_mount": ("ENOMEM", "EIO"), "open_tree": ("ENOMEM", "EIO"),
    "fsopen": ("ENOMEM",), "fsmount": ("ENOMEM",),
    "pivot_root": ("ENOMEM", "EIO"), "unshare": ("ENOMEM", "ENOSPC"), "setns": ("ENOMEM",),
    "sethostname": ("ENOMEM",), "fchown": ("EIO",), "chown": ("EIO",), "fchownat": ("EIO",),
    "sendmsg": ("ENOMEM", "ENOBUFS"), "sendto": ("ENOMEM", "ENOBUFS"),
    "openat2": ("ENOMEM", "EIO"),
})


class Env:
    """One harness run's scratch: runtime root, bundle, engine storage, image tarball."""

    def __init__(self, ketch=KETCH):
        self.ketch = ketch
        self.base = tempfile.mkdtemp(prefix="ketch-faults-")
        self.root = tempfile.mkdtemp(prefix="ketch-faults-root-", dir="/run")
        self.storage = os.path.join(self.base, "storage")
        self.bundle = os.path.join(self.base, "bundle")
        self.tar = os.path.join(self.base, "busybox.tar")
        self._n = 0
        self._image = False
        self.seen = set()
        self.rounds = []  # (what, ids) of each round run, for late_leaks
        os.makedirs(self.bundle)
        from ketch import busybox
        from ketch.spec.default import default_spec

        rootfs = busybox.make_rootfs(os.path.join(self.bundle, "rootfs"))
        cfg = default_spec(terminal=False)
        cfg["root"] = {"path": "rootfs", "readonly": False}
        cfg["process"]["args"] = ["sleep", "300"]
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        with tarfile.open(self.tar, "w") as t:
            t.add(rootfs, arcname=".")
        self.cgroups_before = set(leaks.all_ketch_cgroups())

    def new_id(self, prefix="f"):
        self._n += 1
        return f"{prefix}{os.getpid()}-{self._n}"

    def argv(self, *args):
        return [self.ketch, "--root", self.root, *args]

    def env(self):
        return dict(os.environ, KETCH_STORAGE_ROOT=self.storage)

    def sh(self, *args, check=True, timeout=60):
        p = self.call(self.argv(*args), timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"ketch {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def call(self, argv, timeout=120):
        """Run ``argv`` with its output in files, not pipes: a detached
        container inherits the command's stdio and would hold a pipe open."""
        with tempfile.TemporaryFile(dir=self.base) as out, tempfile.TemporaryFile(dir=self.base) as err:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout,
                               env=self.env())
            out.seek(0)
            err.seek(0)
            p.stdout = out.read().decode(errors="replace")
            p.stderr = err.read().decode(errors="replace")
        self.note_ids()
        return p

    def note_ids(self):
        """Remember the container ids this run's stores have held: a cgroup
        is ours only if its name is one of them (other programs on the host
        run engine containers under /ketch too)."""
        for d in (self.root, os.path.join(self.storage, "containers")):
            try:
                self.seen.update(n for n in os.listdir(d) if not n.startswith("."))
            except FileNotFoundError:
                pass

    def ensure_image(self):
        if not self._image:
            self.sh("image", "import", self.tar, "bb:latest")
            self._image = True

    def pull_source(self):
        """A reference on a docker-registry of this run (loopback) to an image
        whose layer the store does not hold: each pull fetches it."""
        if getattr(self, "_registry", None) is None:
            sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
            sys.path.append(os.path.dirname(HERE))  # tests/: conftest's rootless helper (after integration/)
            from test_registry import Registry

            self._registry = Registry(os.path.join(self.base, "registry"))
            part = os.path.join(self.base, "part.tar")
            with tarfile.open(part, "w") as t:
                t.add(os.path.join(self.bundle, "rootfs", "etc"), arcname="etc")
            self._pull_ref = f"{self._registry.host}/faults/part:1"
            self.sh("image", "import", part, self._pull_ref)
            self.sh("image", "push", "-q", "--tls-verify=false", self._pull_ref)
            self.sh("image", "rm", self._pull_ref)
        return self._pull_ref

    def leaks(self, ids, grace=2.0):
        self.note_ids()
        left = leaks.find(self.root, sorted(set(ids) | self.seen), [self.base], grace=grace)
        new_cg = sorted(d for d in set(leaks.all_ketch_cgroups()) - self.cgroups_before
                        if os.path.basename(d) in self.seen or os.path.basename(d) in ids)
        if new_cg:
            left["cgroup"] = sorted(set(left.get("cgroup", [])) | set(new_cg))
        store = storage_problems(self.storage)
        if store:
            left["storage"] = store
        return left

    def scrub(self, ids):
        leaks.scrub(self.root, ids, [self.base])
        # The processes just killed may take a moment to leave their cgroups:
        # one rmdir right after the kill left empty ketch/<id> cgroups on the
        # host once they had (after a round whose create hung, issue 18).
        deadline = time.monotonic() + 10
        while True:
            left = sorted((d for d in set(leaks.all_ketch_cgroups()) - self.cgroups_before
                           if os.path.basename(d) in self.seen), reverse=True)
            for d in left:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
            if not left or time.monotonic() > deadline or not any(os.path.isdir(d) for d in left):
                break
            time.sleep(0.05)

    def rm_engine_containers(self):
        if os.path.isdir(self.storage):
            for cid in self.sh("container", "ls", "-aq", "--no-trunc", check=False).stdout.split():
                self.sh("container", "rm", "-f", cid, check=False)

    def close(self):
        if getattr(self, "_registry", None) is not None:
            self._registry.stop()
        self.rm_engine_containers()
        self.scrub([])
        for mp in reversed(leaks.mounts([self.base])):
            subprocess.run(["umount", "-l", mp], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)


def storage_problems(root):
    """What a consistent engine store must not hold: temp files and
    half-made layers once a change has run, records pointing at nothing."""
    out = []
    img = os.path.join(root, "images")
    if not os.path.isdir(img):
        return out
    for sub in ("tmp",):
        d = os.path.join(img, sub)
        if os.path.isdir(d) and os.listdir(d):
            out.append(f"{d}: {sorted(os.listdir(d))[:5]}")
    for dirpath, _, files in os.walk(img):
        for n in files:
            if n.startswith(".tmp-") or n.endswith(".incomplete"):
                out.append(os.path.join(dirpath, n))
    try:
        with open(os.path.join(img, "repositories.json")) as f:
            repos = json.load(f)
    except FileNotFoundError:
        repos = {}
    except ValueError as e:
        out.append(f"repositories.json: {e}")
        repos = {}
    cdir = os.path.join(root, "containers")
    if os.path.isdir(cdir):
        for n in os.listdir(cdir):
            d = os.path.join(cdir, n)
            if n.startswith(".rm-") or (len(n) == 64 and not os.path.exists(os.path.join(d, "record.json"))):
                out.append(f"half-made or half-removed container {d}")
        names = os.path.join(cdir, "names")
        if os.path.isdir(names):
            for n in os.listdir(names):
                if not os.path.exists(os.path.join(cdir, os.readlink(os.path.join(names, n)), "record.json")):
                    out.append(f"container name {n} points at no container")
    for name, iid in repos.items():
        rec = os.path.join(img, "db", iid.split(":")[-1] + ".json")
        if not os.path.exists(rec):
            out.append(f"{name} -> {iid}: no image record")
    return out


# ------------------------------------------------------------------ scenarios

class Scenario:
    """setup(env) -> (argv to trace, ids it concerns, state); repair(env, state) runs after."""

    engine = False

    def __init__(self, name, setup, repair, rolls_back=False, marker=None, children=False):
        self.name = name
        self.setup = setup
        self.repair = repair
        self.rolls_back = rolls_back  # a failed command must leave nothing even before the repair
        self.marker = marker
        self.children = children  # forks stage-1 and the init: the child modes reach them


def _bundle_cgns(env):
    """The bundle with a cgroup namespace of its own: stage-1 joins the
    cgroups before it forks the init (the path without the cgroup gate)."""
    d = os.path.join(env.base, "bundle-cgns")
    if not os.path.isdir(d):
        os.makedirs(d)
        with open(os.path.join(env.bundle, "config.json")) as f:
            cfg = json.load(f)
        cfg["root"]["path"] = os.path.join(env.bundle, "rootfs")
        cfg["linux"]["namespaces"].append({"type": "cgroup"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
    return d


def _create_cgns(env):
    cid = env.new_id()
    return env.argv("create", "-b", _bundle_cgns(env), cid), [cid], {"id": cid}


def _delete(env, st):
    p = env.sh("delete", "--force", st["id"], check=False)
    return p


def _fresh(verb_args):
    def setup(env):
        cid = env.new_id()
        return env.argv(*[a.format(id=cid, bundle=env.bundle) for a in verb_args]), [cid], {"id": cid}
    return setup


def _on_created(verb_args, run=False):
    def setup(env):
        cid = env.new_id()
        env.sh("run" if run else "create", *(["-d"] if run else []), "-b", env.bundle, cid)
        return env.argv(*[a.format(id=cid) for a in verb_args]), [cid], {"id": cid}
    return setup


def _engine_name(env):
    return env.new_id("e")


def _engine_rm(env, st):
    p = env.sh("container", "rm", "-f", st["id"], check=False)
    if p.returncode != 0 and "no such container" not in p.stderr.lower():
        return p
    return subprocess.CompletedProcess(p.args, 0, p.stdout, "")


def _engine_ids(env):
    ids = env.sh("container", "ls", "-aq", "--no-trunc", check=False).stdout.split()
    return ids


def _engine_run_setup(env):
    env.ensure_image()
    name = _engine_name(env)
    return env.argv("container", "run", "--rm", "--name", name, "bb", "true"), [], {"id": name}


def _engine_running(verb):
    def setup(env):
        env.ensure_image()
        name = _engine_name(env)
        env.sh("container", "run", "-d", "--name", name, "bb", "sleep", "300")
        args = {"stop": ("container", "stop", "-t", "1", name), "rm": ("container", "rm", "-f", name)}[verb]
        return env.argv(*args), [], {"id": name}
    return setup


def _import_setup(env):
    tag = env.new_id("imp")
    return env.argv("image", "import", env.tar, f"{tag}:1"), [], {"tag": f"{tag}:1"}


def _import_repair(env, st):
    # The next change must sweep what a killed import left (the tag is there
    # or not: an import names a new image each time), and the image must
    # import again under the same name.
    env.sh("image", "rm", st["tag"], check=False)
    p = env.sh("image", "import", env.tar, st["tag"], check=False)
    if p.returncode == 0:
        p = env.sh("image", "rm", st["tag"], check=False)
    return p


def _commit_setup(env):
    env.ensure_image()
    name = _engine_name(env)
    env.sh("container", "run", "-d", "--name", name, "bb", "sleep", "300")
    tag = f"{name}:committed"
    return env.argv("container", "commit", name, tag), [], {"id": name, "tag": tag}


def _commit_repair(env, st):
    if env.sh("image", "rm", st["tag"], check=False).returncode != 0:
        # The commit never made its image: the next image change sweeps
        # what it left (a layer being made, its blob).
        env.sh("image", "tag", "bb:latest", "sweep:1")
        env.sh("image", "rm", "sweep:1")
    return _engine_rm(env, st)


def _pull_setup(env):
    ref = env.pull_source()
    return env.argv("image", "pull", "-q", "--tls-verify=false", ref), [], {"tag": ref}


def _pull_repair(env, st):
    # The next pull must complete whatever a killed one left; then the image goes again.
    p = env.sh("image", "pull", "-q", "--tls-verify=false", st["tag"], check=False)
    if p.returncode == 0:
        p = env.sh("image", "rm", st["tag"], check=False)
    return p


SCENARIOS = {s.name: s for s in [
    Scenario("create", _fresh(["create", "-b", "{bundle}", "{id}"]), _delete, rolls_back=True, children=True),
    Scenario("run-d", _fresh(["run", "-d", "-b", "{bundle}", "{id}"]), _delete, rolls_back=True,
             children=True),
    Scenario("create-cgns", _create_cgns, _delete, rolls_back=True, children=True),
    Scenario("start", _on_created(["start", "{id}"]), _delete),
    Scenario("exec", _on_created(["exec", "{id}", "sh", "-c", "echo hi"], run=True), _delete, children=True),
    Scenario("delete", _on_created(["delete", "--force", "{id}"], run=True), _delete),
    Scenario("kill", _on_created(["kill", "{id}", "KILL"], run=True), _delete),
    Scenario("pause", _on_created(["pause", "{id}"], run=True), _delete),
    Scenario("update", _on_created(["update", "--pids-limit", "50", "{id}"], run=True), _delete),
    Scenario("container-run", _engine_run_setup, _engine_rm, marker="containers"),
    Scenario("container-stop", _engine_running("stop"), _engine_rm, marker="containers"),
    Scenario("container-rm", _engine_running("rm"), _engine_rm, marker="containers"),
    Scenario("image-import", _import_setup, _import_repair, marker="images"),
    Scenario("image-commit", _commit_setup, _commit_repair, marker="images"),
    Scenario("image-pull", _pull_setup, _pull_repair, marker="images"),
]}
for _s in SCENARIOS.values():
    _s.engine = _s.name.startswith(("container-", "image-"))


# ------------------------------------------------------------------ tracing

# Modes: kill / error at a call of the ketch process the user ran;
# ckill / cerror at a call of one of its forked children (stage-1, the
# init, an exec's setns child), traced with ``strace -f``.  strace counts
# ``when=`` per call name *and per process*, so an injection fires in every
# traced process that reaches that occurrence: the point (name, N) is
# taken from a child's list, and may hit the parent or a sibling too.
MODES = ("kill", "error", "ckill", "cerror")
# strace -f writes each line's pid left-justified in a column five wide
# ("%-5d "): a pid below 10000 is followed by two spaces, a longer one by
# one.  Parsing with a single space read no exit status and no child calls
# whenever the pids were short -- the "unreliable" child modes.
_PID = re.compile(r"^(\d+)\s+(.*)$", re.S)
_EXIT = re.compile(r"^(\d+)\s+\+\+\+ (?:exited with (\d+)|killed by (SIG\w+))")


def split_pid(line):
    """(pid, rest of the line) of a ``strace -f`` line; pid None if it has none."""
    m = _PID.match(line)
    return (m.group(1), m.group(2)) if m else (None, line)


def traced(env, argv, out, inject=None, timeout=120):
    """Run ``argv`` under ``strace -f`` (children followed, each detached at
    its execve: the container's own process is not ours to fail), writing
    the trace to ``out``.  A ``create`` leaves its init waiting on the exec
    fifo, and strace would wait for it: once the ketch process itself has
    exited, strace is told to detach (SIGTERM) from what is left.  Returns a
    CompletedProcess with the ketch process's exit status."""
    # -I2: with -o, strace blocks SIGTERM unless told otherwise.
    args = [STRACE, "-f", "-q", "-I2", "--detach-on=execve", "-s", "64", "-o", out]
    if inject:
        args.append(f"--inject={inject}")
    with tempfile.TemporaryFile(dir=env.base) as so, tempfile.TemporaryFile(dir=env.base) as se:
        p = subprocess.Popen(args + list(argv), stdin=subprocess.DEVNULL, stdout=so, stderr=se, env=env.env())
        main = 0
        deadline = time.monotonic() + timeout
        while p.poll() is None and time.monotonic() < deadline:
            if not main:
                try:
                    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                        kids = f.read().split()
                    main = int(kids[0]) if kids else 0
                except OSError:
                    pass
            elif _gone(main):
                # strace writes the exit line once it has reaped ketch: wait for
                # it (a loaded machine can take seconds), then let go of the rest.
                mark = re.compile(rb"^%d\s+\+\+\+ " % main, re.M)
                until = time.monotonic() + 15
                while p.poll() is None and time.monotonic() < until:
                    try:
                        with open(out, "rb") as f:
                            if mark.search(f.read()):
                                break
                    except OSError:
                        pass
                    time.sleep(0.05)
                try:
                    p.wait(0.5)
                except subprocess.TimeoutExpired:
                    p.terminate()
                break
            time.sleep(0.01)
        if p.poll() is None and time.monotonic() >= deadline:
            p.kill()
        p.wait()
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read().decode(errors="replace"), se.read().decode(errors="replace")
    env.note_ids()
    rc = None
    first = None
    with open(out, errors="replace") as f:
        for line in f:
            if first is None:
                first = split_pid(line)[0]
            m = _EXIT.match(line)
            if m and m.group(1) == first:
                rc = int(m.group(2)) if m.group(2) is not None else -_signum(m.group(3))
    if rc is None:
        rc = p.returncode
    return subprocess.CompletedProcess(argv, rc, stdout, stderr)


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return True
    return st[st.rfind(b")") + 2:][:1] in (b"Z", b"X")


def _signum(name):
    import signal
    return int(getattr(signal, name, 9))


def child_points(env, scenario):
    """The calls of the command's forked children in a clean ``strace -f``
    run: [(name, occurrence in its process, line)], each (name, occurrence)
    once."""
    argv, ids, st = scenario.setup(env)
    out = os.path.join(env.base, "trace-f.txt")
    try:
        p = traced(env, argv, out)
        if p.returncode != 0:
            raise RuntimeError(f"clean strace -f run of {scenario.name} failed: {p.stderr.strip()}")
    finally:
        scenario.repair(env, st)
    seen, main, points, done = {}, None, [], set()
    with open(out, errors="replace") as f:
        for line in f:
            pid, rest = split_pid(line)
            if main is None:
                main = pid
            if rest.startswith("<..."):
                continue  # the end of a call whose start was counted
            m = _LINE.match(rest)
            if not m:
                continue
            name = m.group(1)
            key = (pid, name)
            seen[key] = seen.get(key, 0) + 1
            if pid != main and (name, seen[key]) not in done:
                done.add((name, seen[key]))
                points.append((name, seen[key], rest.rstrip("\n")))
    os.unlink(out)
    left = env.leaks(ids)
    if left:
        raise RuntimeError(f"clean strace -f run of {scenario.name} left {left}")
    return points

def trace_points(env, scenario):
    """The traced command's calls of a clean run: [(name, occurrence, line)]."""
    if scenario.engine:
        # Once untraced first: the store's first container or image makes
        # directories the later runs find made (fewer mkdirs), and the
        # occurrences counted here must be those of the rounds.
        argv, ids, st = scenario.setup(env)
        try:
            env.call(argv)
        finally:
            scenario.repair(env, st)
    argv, ids, st = scenario.setup(env)
    out = os.path.join(env.base, "trace.txt")
    try:
        p = env.call([STRACE, "-qq", "-s", "64", "-o", out, *argv])
        if p.returncode != 0:
            raise RuntimeError(f"clean traced run of {scenario.name} failed: {p.stderr.strip()}")
    finally:
        scenario.repair(env, st)
    seen = {}
    points = []
    with open(out, errors="replace") as f:
        for line in f:
            m = _LINE.match(line)
            if not m:
                continue
            name = m.group(1)
            seen[name] = seen.get(name, 0) + 1
            points.append((name, seen[name], line.rstrip("\n")))
    os.unlink(out)
    left = env.leaks(ids)
    if left:
        raise RuntimeError(f"clean run of {scenario.name} left {left}")
    return points


def interesting_start(points, env, scenario):
    """Index of the first call that touches ketch's state (the runtime root
    or the engine store): the interpreter's start before it is the same for
    every verb and sampled only by the exhaustive run."""
    mark = env.storage if scenario.engine else env.root
    for i, (name, _, line) in enumerate(points):
        if mark in line and name != "execve":
            return i
    return 0


def choose(points, env, scenario, mode, sample, seed, exhaustive=False, stride=1):
    cand = list(range(len(points)))
    if not exhaustive and mode in ("kill", "error"):
        cand = cand[interesting_start(points, env, scenario):]
    if mode in ("error", "cerror"):
        cand = [i for i in cand if errnos_for(points[i][0], points[i][2], mode == "cerror")]
    if exhaustive or sample >= len(cand):
        return cand[::stride]
    rnd = random.Random(f"{seed}-{scenario.name}-{mode}")
    # Spread over the run: one random call from each of `sample` equal slices.
    out = []
    for k in range(sample):
        lo, hi = len(cand) * k // sample, len(cand) * (k + 1) // sample
        if hi > lo:
            out.append(cand[rnd.randrange(lo, hi)])
    return out


class Failure(Exception):
    pass


def _interpreter_startup(stderr):
    """A failure of Python's own start-up: frozen importlib/getpath frames, none of ketch's."""
    return ("Traceback" in stderr or "Fatal Python error" in stderr) and "<frozen " in stderr \
        and "/ketch/" not in stderr and not stderr.startswith("ketch: ")


def run_point(env, scenario, points, index, mode):
    """One round; returns a description of what went wrong, or None."""
    name, occ, line = points[index]
    argv, ids, st = scenario.setup(env)
    child = mode in ("ckill", "cerror")
    where = "a child's call" if child else "call"
    if mode in ("kill", "ckill"):
        inject = f"{name}:signal=KILL:when={occ}"
        what = f"SIGKILL at {where} {index + 1} ({line[:90]})"
    else:
        errs = errnos_for(name, line, child)
        err = errs[occ % len(errs)]
        inject = f"{name}:error={err}:when={occ}"
        what = f"{err} at {where} {index + 1} ({line[:90]})"
    if child:
        p = traced(env, argv, os.path.join(env.base, "trace-inject.txt"), inject)
    else:
        p = env.call([STRACE, "-qq", "-o", "/dev/null", f"--inject={inject}", *argv])
    env.last = (inject, p.returncode, (p.stderr.strip().splitlines() or [""])[-1][:160])
    problems = []
    if mode == "ckill" and scenario.name == "exec" and p.returncode == 137 and not p.stderr.strip():
        # exec's process was killed after its pid reached ketch: exec returns
        # its status, 128 + SIGKILL, as for any process killed in the container.
        pass
    elif mode == "ckill" and p.returncode >= 0:
        # A child killed: the command fails with one line and rolls back
        # (or the kill came after the child's work was done: it succeeds).
        # When the same occurrence also killed ketch itself (rc < 0), the
        # repair below is what must clean up.
        err = "SIGKILL"
        mode = "cerror"
    if mode in ("error", "cerror"):
        err_lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        if _interpreter_startup(p.stderr):
            # The child modes' occurrence hit the interpreter's own start-up in
            # the parent (an open of its prefix, of a directory its importer
            # lists), before any of ketch ran: not ketch's to handle.  What is
            # left is still checked below.
            pass
        elif "Traceback" in p.stderr:
            problems.append(f"traceback: {p.stderr.strip()[-600:]}")
        elif err.startswith("EINTR") and p.returncode != 0:
            problems.append(f"EINTR was not retried: rc={p.returncode} {p.stderr.strip()!r}")
        elif err == "EAGAIN" and name in _FORKS and "CLONE_THREAD" not in line and p.returncode != 0:
            problems.append(f"EAGAIN of a fork was not retried: rc={p.returncode} {p.stderr.strip()!r}")
        elif p.returncode != 0:
            bad = [ln for ln in err_lines if not ln.startswith("ketch: ")]
            if len(err_lines) != 1 or bad:
                problems.append(f"want one 'ketch: ...' error line, got rc={p.returncode} {p.stderr.strip()!r}")
        elif p.returncode < 0:
            problems.append(f"killed by signal {-p.returncode}")
        if p.returncode != 0 and scenario.rolls_back:
            left = env.leaks(ids + [st.get("id")] if st.get("id") else ids)
            if left:
                problems.append(f"failed without rolling back: left {left}")
    r = scenario.repair(env, st)
    if r.returncode != 0 or "Traceback" in r.stderr:
        problems.append(f"repair {' '.join(r.args[3:]) if isinstance(r.args, list) else r.args} "
                        f"failed ({r.returncode}): {r.stderr.strip()[-400:]!r}")
    if scenario.engine:
        # The engine's monitor may still be finishing the container.
        deadline = time.monotonic() + 10
        while _engine_ids(env) and time.monotonic() < deadline:
            for cid in _engine_ids(env):
                env.sh("container", "rm", "-f", cid, check=False)
            time.sleep(0.1)
        if _engine_ids(env):
            problems.append(f"engine still lists containers {_engine_ids(env)}")
        # The store checks itself: after the repair, nothing inconsistent.
        chk = env.sh("system", "check", check=False)
        if chk.returncode != 0 or "Traceback" in chk.stderr:
            problems.append(f"system check after the repair: {(chk.stdout + chk.stderr).strip()[-600:]!r}")
            # Reported once: the rounds after this one start from a sound store.
            env.sh("system", "check", "--repair", check=False)
    allids = ids + ([st["id"]] if "id" in st else [])
    left = env.leaks(allids)
    if left:
        problems.append(f"left {left}")
        env.scrub(allids)
    env.rounds.append((f"{scenario.name}: {what}", allids))
    if problems:
        return f"{scenario.name}: {what}: " + "; ".join(problems)
    return None


def late_leaks(env, last=None):
    """Cgroups of earlier rounds that appeared after their round was checked
    (a process still running when the round ended could make one later):
    [failure description], and removed."""
    out = []
    for what, ids in env.rounds[-last:] if last else env.rounds:
        late = leaks.cgroup_dirs(ids)
        if late:
            out.append(f"{what}: left, after its round was checked, {late}")
            env.scrub(ids)
    return out


STATS = {}  # (scenario, mode) -> rounds run, for the summary
# (scenario, mode) -> {"rounds", "killed" (ketch itself died), "completed"
# (the command succeeded all the same: a retried EINTR/EAGAIN, a fault in a
# step after its work was done), "refused" (one error line, rolled back),
# "failures", and one count per errno injected}
OUTCOMES = {}


def _count(sname, mode, failed, env):
    o = OUTCOMES.setdefault((sname, mode), {"rounds": 0, "killed": 0, "completed": 0, "refused": 0,
                                            "failures": 0})
    inj, rc, _ = getattr(env, "last", ("", 0, ""))
    o["rounds"] += 1
    m = re.search(r":error=(\w+)", inj)
    if m:
        o[m.group(1)] = o.get(m.group(1), 0) + 1
    if failed:
        o["failures"] += 1
    elif rc < 0:
        o["killed"] += 1
    elif rc == 0:
        o["completed"] += 1
    else:
        o["refused"] += 1


def run(scenarios, modes, sample=15, seed=18, exhaustive=False, log=None, env=None, stride=1):
    """Run rounds; return (number of rounds, [failures])."""
    own = env is None
    env = env or Env()
    failures = []
    rounds = 0
    try:
        for sname in scenarios:
            sc = SCENARIOS[sname]
            points = cpoints = None
            for mode in modes:
                if mode in ("ckill", "cerror"):
                    if not sc.children:
                        continue
                    if cpoints is None:
                        cpoints = child_points(env, sc)
                    pts = cpoints
                else:
                    if points is None:
                        points = trace_points(env, sc)
                    pts = points
                chosen = choose(pts, env, sc, mode, sample, seed, exhaustive, stride)
                for i in chosen:
                    rounds += 1
                    try:
                        f = run_point(env, sc, pts, i, mode)
                    except subprocess.TimeoutExpired as e:
                        # A command that never ended is a finding, not the end of the sweep.
                        f = f"{sname}: {mode} at call {i + 1} ({pts[i][2][:90]}): hung: {e}"
                        env.scrub(list(env.seen))
                    key = (sname, mode)
                    STATS[key] = STATS.get(key, 0) + 1
                    _count(sname, mode, f, env)
                    if f:
                        failures.append(f)
                    # The rounds before this one: anything they left since.
                    failures.extend(late_leaks(env, last=20))
                    if log:
                        inj, rc, line = getattr(env, "last", ("", 0, ""))
                        log(f"{sname} {mode} call {i + 1}/{len(pts)} [{inj} -> rc {rc} {line}]: {f or 'ok'}")
        if rounds:
            # Whatever a process of the last rounds could still be doing
            # (every ketch process of theirs is gone, or was reported).
            time.sleep(1)
            failures.extend(late_leaks(env))
    finally:
        if own:
            env.close()
    return rounds, failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", action="append", choices=MODES)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--all", action="store_true", help="every call of the run (exhaustive)")
    ap.add_argument("--stride", type=int, default=1, help="with --all: every K-th call")
    ap.add_argument("--sample", type=int, default=15)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--json", help="write the per-scenario, per-mode outcome counts here")
    a = ap.parse_args()
    leaks.own_network_namespace()
    scen = a.scenario or list(SCENARIOS)
    modes = a.mode or list(MODES)
    t0 = time.monotonic()
    n, failures = run(scen, modes, a.sample, a.seed, a.all,
                      log=(lambda m: print(m, flush=True)) if a.verbose else None, stride=a.stride)
    for f in failures:
        print("FAIL", f)
    for sname in scen:
        counts = [f"{m} {STATS[(sname, m)]}" for m in modes if (sname, m) in STATS]
        bad = sum(1 for f in failures if f.startswith(sname + ":"))
        print(f"  {sname}: {', '.join(counts)}; failed {bad}")
    for (sname, mode), o in OUTCOMES.items():
        print(f"  outcome {sname} {mode}: " + " ".join(f"{k}={v}" for k, v in o.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{s_} {m}": o for (s_, m), o in OUTCOMES.items()}, f, indent=1)
    print(f"{n} rounds ({', '.join(modes)}; {', '.join(scen)}) in {time.monotonic() - t0:.0f} s: "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
