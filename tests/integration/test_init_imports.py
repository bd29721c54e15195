"""The runtime never imports Python code from a container's image.

After pivot_root (and after joining a container's mount namespace for exec)
paths such as /usr/lib/python3.11 or ketch's own source directory resolve
inside the image.  An import that slipped through there would run the
image's code as root before the user's process starts.  Plant a module at
every path the interpreter could look in, exercise the features whose code
is imported lazily, and check none of the planted modules ran.
"""

import os
import subprocess
import sys

import ketch

SRC = os.path.dirname(os.path.dirname(os.path.abspath(ketch.__file__)))
STDLIB = os.path.dirname(os.__file__)
PLANT = "import os\nos.makedirs('/pwned', exist_ok=True)\nopen('/pwned/' + __name__, 'w').close()\n"
STDLIB_NAMES = ("json", "signal", "socket", "subprocess", "shutil", "re", "enum", "ctypes", "errno",
                "fcntl", "struct", "select", "termios", "tty", "resource", "pwd", "time", "tempfile",
                "selectors", "traceback", "linecache", "warnings", "importlib", "encodings")


def _plant(rootfs):
    count = 0
    for dirpath, _, files in os.walk(os.path.join(SRC, "ketch")):
        rel = os.path.relpath(dirpath, "/")
        target = os.path.join(rootfs, rel)
        os.makedirs(target, exist_ok=True)
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(target, f), "w") as fh:
                    fh.write(PLANT)
                count += 1
    std = os.path.join(rootfs, os.path.relpath(STDLIB, "/"))
    os.makedirs(std, exist_ok=True)
    for name in STDLIB_NAMES:
        with open(os.path.join(std, name + ".py"), "w") as fh:
            fh.write(PLANT)
        count += 1
    return count


def test_no_module_from_the_image_runs(ketch, own_bundle, cid, tmp_path):
    assert _plant(own_bundle.rootfs) > 50
    cfg = own_bundle.config
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1000, "soft": 1000}]
    cfg["process"]["oomScoreAdj"] = 100
    cfg["linux"]["sysctl"] = {"kernel.shmmax": "100000000"}
    cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    cfg["hooks"] = {"startContainer": [{"path": "/bin/true"}],
                    "createContainer": [{"path": "/bin/true"}]}
    own_bundle.sh("sleep 100").write()
    ketch("run", "-d", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # exec joins the same mount namespace
    p = ketch("exec", cid, "true", check=False)
    assert p.returncode == 0, p.stderr
    ketch("delete", "--force", cid)
    assert not os.path.exists(os.path.join(own_bundle.rootfs, "pwned")), \
        os.listdir(os.path.join(own_bundle.rootfs, "pwned"))
    # the same with a terminal: the console code is imported before pivot_root too
    cfg["process"]["terminal"] = True
    own_bundle.args("true").write()
    script = (f"import pty, subprocess, sys; sys.exit(subprocess.run({ketch.cmd('run', '-b', own_bundle.path, cid)!r}, "
              "stdin=subprocess.DEVNULL).returncode)")
    p = subprocess.run(["script", "-qec", f"{sys.executable} -c '{script}'", "/dev/null"],
                       capture_output=True, text=True, timeout=60)
    assert not os.path.exists(os.path.join(own_bundle.rootfs, "pwned"))
