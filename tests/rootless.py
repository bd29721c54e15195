"""An unprivileged test user for the rootless tests (runtime and engine).

Stable API (used by the rootless runtime, engine and podman tests):

    user = ensure_user()          # idempotent, as root
    user.name, user.uid, user.gid, user.home, user.runtime_dir
    user.subuid, user.subgid      # (start, count) written to /etc/subuid, /etc/subgid
    user.env(**extra)             # the clean environment commands run with
    user.argv(cmd)                # `setpriv ... -- cmd`: cmd as the user, no capabilities
    user.run(cmd, check=..., ...) # subprocess.run as the user (text, captured output)
    user.popen(cmd, ...)          # subprocess.Popen as the user
    user.mkdtemp(prefix)          # a fresh directory in the user's home, owned by the user
    user.chown_tree(path)         # give a tree (made by root) to the user
    user.processes()              # host pids running as the user or one of its sub-ids
    user.mounts()                 # host mounts under its home or runtime dir
    user.cleanup()                # as root: kill its processes, empty its runtime dir, scratch
    remove_user()                 # delete the user, its ranges and its home (idempotent)

and the session-scoped pytest fixture `rootless_user` (integration and security
conftests import it), which yields a clean user and cleans it again at the end.
The user is kept between sessions: creating it costs a useradd each time for
nothing, and cleanup() leaves no process, mount or state of it behind.

Run as root only; everything here is a test helper, never ketch code.
"""

import os
import pwd
import grp
import shutil
import signal
import subprocess
import tempfile
import time

NAME = os.environ.get("KETCH_TEST_USER", "ketchrl")
UID = GID = 2345
SUBID = (200000, 65536)
SCRATCH = "scratch"  # under the home: directories made by mkdtemp
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RootlessUser:
    def __init__(self, name, uid, gid, home, subuid, subgid):
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home
        self.subuid = subuid
        self.subgid = subgid
        self.runtime_dir = f"/run/user/{uid}"

    def __repr__(self):
        return f"RootlessUser({self.name}, uid={self.uid})"

    # ------------------------------------------------------------- running

    def env(self, **extra):
        env = {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": PATH,
            "XDG_RUNTIME_DIR": self.runtime_dir,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for k in ("KETCH_REGISTRIES_ALLOWED", "KETCH_SEARCH_REGISTRIES"):
            if k in os.environ:
                env[k] = os.environ[k]
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def argv(self, cmd):
        # --init-groups: the user's own supplementary groups, not root's;
        # --inh-caps/-bounding left alone: a non-root uid drops the effective
        # and permitted sets on the uid change, as a login would have them.
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--", *cmd]

    def run(self, cmd, check=False, timeout=120, env=None, input=None, cwd=None, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.run(self.argv(cmd), env=env or self.env(), cwd=cwd or self.home,
                           text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"as {self.name}: {' '.join(cmd)} failed ({p.returncode}):\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def popen(self, cmd, env=None, cwd=None, **kw):
        return subprocess.Popen(self.argv(cmd), env=env or self.env(), cwd=cwd or self.home,
                                **kw)

    # ------------------------------------------------------------- files

    def mkdtemp(self, prefix="t"):
        base = os.path.join(self.home, SCRATCH)
        if not os.path.isdir(base):
            os.makedirs(base, mode=0o755)
            os.chown(base, self.uid, self.gid)
        d = tempfile.mkdtemp(prefix=prefix, dir=base)
        os.chmod(d, 0o755)
        os.chown(d, self.uid, self.gid)
        return d

    def chown_tree(self, path):
        for dirpath, dirnames, filenames in os.walk(path):
            os.lchown(dirpath, self.uid, self.gid)
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), self.uid, self.gid)

    # ------------------------------------------------------------- inspection

    def _owned(self, uid):
        lo, n = self.subuid
        return uid == self.uid or lo <= uid < lo + n

    def processes(self):
        pids = []
        me = os.getpid()
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/status") as f:
                    for line in f:
                        # A zombie is dead already: its parent reaps it, not us.
                        if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                            break
                        if line.startswith("Uid:"):
                            if any(self._owned(int(x)) for x in line.split()[1:]):
                                pids.append(int(d))
                            break
            except OSError:
                continue
        return pids

    def mounts(self):
        prefixes = (self.home.rstrip("/") + "/", self.runtime_dir + "/")
        out = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                if mp.startswith(prefixes) or mp in (self.home, self.runtime_dir):
                    out.append(mp)
        return out

    # ------------------------------------------------------------- cleanup

    def kill_processes(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            pids = self.processes()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of {self.name} survive SIGKILL: {pids}")
            time.sleep(0.05)

    def cleanup(self, scratch=True):
        """Kill every process of the user (and its sub-ids), unmount what it left
        on the host, empty its runtime dir and (scratch=True) its scratch dirs.
        The rest of the home (e.g. podman or ketch storage a test keeps as a
        cache) stays; tests that own such state remove it themselves."""
        self.kill_processes()
        for mp in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        _ensure_runtime_dir(self)
        for n in os.listdir(self.runtime_dir):
            _rm(os.path.join(self.runtime_dir, n))
        if scratch:
            _rm(os.path.join(self.home, SCRATCH))


def _rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        # Containers' files can be read-only directories owned by sub-ids.
        subprocess.run(["chmod", "-R", "u+rwX", path], stderr=subprocess.DEVNULL)
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _ensure_runtime_dir(user):
    os.makedirs("/run/user", mode=0o755, exist_ok=True)
    if not os.path.isdir(user.runtime_dir):
        os.mkdir(user.runtime_dir, 0o700)
    os.chown(user.runtime_dir, user.uid, user.gid)
    os.chmod(user.runtime_dir, 0o700)


def _set_range(path, name, rng):
    """Make `name:start:count` the only line of `name` in /etc/subuid or /etc/subgid."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    keep = [ln for ln in lines if ln and ln.split(":", 1)[0] not in (name, str(UID))]
    for ln in keep:
        parts = ln.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            lo, n = int(parts[1]), int(parts[2])
            if lo < rng[0] + rng[1] and rng[0] < lo + n:
                raise RuntimeError(f"{path}: range {rng} for {name} overlaps {ln!r}")
    new = keep + [f"{name}:{rng[0]}:{rng[1]}"]
    if new != lines:
        with open(path + ".ketchtmp", "w") as f:
            f.write("\n".join(new) + "\n")
        os.chmod(path + ".ketchtmp", 0o644)
        os.rename(path + ".ketchtmp", path)


def _del_range(path, name):
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    keep = [ln for ln in lines if ln and ln.split(":", 1)[0] not in (name, str(UID))]
    if keep != lines:
        with open(path, "w") as f:
            f.write("".join(ln + "\n" for ln in keep))


def ensure_user(name=NAME, uid=UID, gid=GID, subid=SUBID):
    """Create (or check) the test user; idempotent; returns a RootlessUser."""
    if os.geteuid() != 0:
        raise RuntimeError("the rootless test user is created as root")
    try:
        g = grp.getgrnam(name)
        if g.gr_gid != gid:
            raise RuntimeError(f"group {name} exists with gid {g.gr_gid}, not {gid}")
    except KeyError:
        subprocess.run(["groupadd", "-g", str(gid), name], check=True)
    try:
        pw = pwd.getpwnam(name)
        if pw.pw_uid != uid:
            raise RuntimeError(f"user {name} exists with uid {pw.pw_uid}, not {uid}")
    except KeyError:
        # No automatic sub-id ranges: ours are written below, at a fixed place.
        subprocess.run(["useradd", "-u", str(uid), "-g", str(gid), "-m", "-d", f"/home/{name}",
                        "-s", "/bin/sh", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0",
                        name], check=True)
        pw = pwd.getpwnam(name)
    home = pw.pw_dir
    os.makedirs(home, exist_ok=True)
    os.chown(home, uid, gid)
    os.chmod(home, 0o755)
    _set_range("/etc/subuid", name, subid)
    _set_range("/etc/subgid", name, subid)
    user = RootlessUser(name, uid, gid, home, subid, subid)
    _ensure_runtime_dir(user)
    return user


def remove_user(name=NAME):
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pw = None
    if pw is not None:
        user = RootlessUser(name, pw.pw_uid, pw.pw_gid, pw.pw_dir, SUBID, SUBID)
        user.cleanup()
        _rm(user.runtime_dir)
        subprocess.run(["userdel", "-r", name], stderr=subprocess.DEVNULL)
        _rm(pw.pw_dir)
    try:
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], stderr=subprocess.DEVNULL)
    except KeyError:
        pass
    _del_range("/etc/subuid", name)
    _del_range("/etc/subgid", name)


try:
    import pytest

    @pytest.fixture(scope="session")
    def rootless_user():
        """The unprivileged test user, clean at the start and at the end of the session."""
        if os.geteuid() != 0:
            pytest.skip("the rootless tests create a user and need root")
        user = ensure_user()
        user.cleanup()
        yield user
        user.cleanup()
except ImportError:  # used outside pytest (a manual session)
    pass


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["remove"]:
        remove_user()
    else:
        u = ensure_user()
        u.cleanup()
        print(u.name, u.uid, u.home, u.runtime_dir)
