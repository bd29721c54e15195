"""Hostile input for ketch (issue 18), with hypothesis: config.json (mutations
of the default spec), the command line, image archives and manifests.
Every case: no traceback; a failure is one "ketch: ..." line; nothing is
left (state, cgroup, mount, process, engine store temp or broken records).

The strategies and checks live here; tests/integration/test_fuzz.py runs
them with a small budget, ``make fuzz`` (KETCH_FUZZ_EXAMPLES) with a big one.
"""

import copy
import hashlib
import io
import json
import os
import tarfile

from hypothesis import strategies as hs

# Keys whose mutation could reach the host rather than the container, left
# alone so that fuzzing is safe to run: without a mount namespace the init
# mounts in ours, a sysctl without a network namespace is the host's, a
# hook runs on the host.
SAFE_SKIP = {("linux", "namespaces"), ("linux", "sysctl"), ("hooks",), ("linux", "uidMappings"),
             ("linux", "gidMappings"), ("linux", "devices"), ("linux", "resources", "devices"),
             ("mounts",)}

_TEXT = hs.text(alphabet="abcxyz019/._-: \n\0é", max_size=12)
_ARG = hs.text(alphabet="abcxyz019/._-:= \né", max_size=12)  # exec(2) takes no NUL
# Fresh containers each draw (hs.just would share one object between draws).
LEAF = hs.one_of(hs.none(), hs.booleans(), hs.integers(min_value=-2**65, max_value=2**65), _TEXT,
                 hs.floats(allow_nan=True), hs.builds(list), hs.builds(dict), hs.lists(_TEXT, max_size=3))


def _paths(obj, prefix=()):
    """Every (path) in a JSON tree whose change is safe (see SAFE_SKIP)."""
    if any(prefix[:len(s)] == s for s in SAFE_SKIP):
        return
    if prefix:
        yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


@hs.composite
def mutated_config(draw, base):
    """The default spec with 1-4 structure-aware changes: a value replaced
    (by another type, a boundary number, odd text), a key removed or added,
    a list emptied or its element repeated."""
    cfg = copy.deepcopy(base)
    for _ in range(draw(hs.integers(1, 4))):
        paths = sorted(_paths(cfg), key=repr)
        if not paths:
            break
        path = draw(hs.sampled_from(paths))
        parent, key = _get(cfg, path[:-1]), path[-1]
        op = draw(hs.sampled_from(["replace", "remove", "add", "dup", "empty"]))
        if op == "replace":
            parent[key] = draw(LEAF)
        elif op == "remove":
            del parent[key]
        elif op == "add" and isinstance(parent[key], dict):
            parent[key][draw(_TEXT)] = draw(LEAF)
        elif op == "dup" and isinstance(parent[key], list) and parent[key]:
            parent[key].append(copy.deepcopy(parent[key][0]))
        elif op == "empty" and isinstance(parent[key], (list, dict)):
            parent[key] = type(parent[key])()
        else:
            parent[key] = draw(LEAF)
    return cfg


VERBS = ["create", "start", "run", "state", "exec", "kill", "delete", "list", "ps", "pause", "resume",
         "update", "spec", "features", "plan", "image", "container", "help", "rm", "ls", "nosuchverb"]
WORDS = ["-d", "--force", "-f", "-b", "--bundle", "--pid-file", "--console-socket", "--root", "-a", "--all",
         "--signal", "-s", "KILL", "9", "0", "-1", "99999999999999999999", "--format", "json", "table",
         "--memory", "1m", "-m", "--pids-limit", "--", "-", "=", "--preserve-fds", "--help", "-h",
         "import", "load", "ls", "rm", "inspect", "tag", "save", "run", "stop", "logs", "commit",
         "--name", "-e", "X=1", "-v", "/a:/b", "--rm", "-t", "--env", "bb", "nosuch:tag", "sh",
         "..", "/", "", "\x01", "a" * 300, "é", "--storage-driver", "vfs", "overlay", "bogus"]
ARGV = hs.tuples(hs.sampled_from(VERBS), hs.lists(hs.one_of(hs.sampled_from(WORDS), _ARG), max_size=6))


def check_output(p):
    """Problems with a finished command's output: a traceback, or a failure
    that is not exactly one "ketch: ..." line (usage text goes to stdout)."""
    if "Traceback" in p.stderr:
        return [f"traceback: {p.stderr[-800:]}"]
    if p.returncode < 0:
        return [f"died of signal {-p.returncode}"]
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        errs = [ln for ln in lines if not ln.startswith("ketch: warning: ")]
        if len(errs) != 1 or not errs[0].startswith("ketch: "):
            return [f"rc={p.returncode}: want one 'ketch: ...' error line, got {p.stderr.strip()!r}"]
    return []


# ------------------------------------------------------------- image archives

def _tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for n, data in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def docker_save_parts(layer):
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
           "rootfs": {"type": "layers", "diff_ids": [diff]}}
    manifest = [{"Config": "CFG", "RepoTags": ["fuzz/img:1"], "Layers": ["l/layer.tar"]}]
    return cfg, manifest


class Layer:
    """The layer bytes, passed by reference (hypothesis prints a strategy's
    arguments: not megabytes of tar)."""

    def __init__(self, data):
        self.data = data

    def __repr__(self):
        return f"Layer({len(self.data)} bytes)"


@hs.composite
def mutated_archive(draw, layer_ref):
    """A `docker save` archive whose manifest.json or config is mutated, or
    whose members are renamed, dropped, duplicated or truncated."""
    layer = layer_ref.data
    cfg, manifest = docker_save_parts(layer)
    target = draw(hs.sampled_from(["manifest", "config", "members", "raw"]))
    if target == "manifest":
        manifest = draw(mutated_config(manifest))
    elif target == "config":
        cfg = draw(mutated_config(cfg))
    cfg_bytes = json.dumps(cfg).encode()
    cfg_name = hashlib.sha256(cfg_bytes).hexdigest() + ".json"
    man = json.loads(json.dumps(manifest).replace('"CFG"', json.dumps(cfg_name)))
    files = {cfg_name: cfg_bytes, "l/layer.tar": layer, "manifest.json": json.dumps(man).encode()}
    if target == "members":
        names = sorted(files)
        n = draw(hs.sampled_from(names))
        op = draw(hs.sampled_from(["drop", "rename", "truncate", "garbage", "traverse"]))
        if op == "drop":
            del files[n]
        elif op == "rename":
            files[draw(hs.sampled_from(["../x", "/abs", "a/../../b", "l/layer.tar/x", ""])) or "x"] = files.pop(n)
        elif op == "truncate":
            files[n] = files[n][:draw(hs.integers(0, max(0, len(files[n]) - 1)))]
        elif op == "garbage":
            files[n] = draw(hs.binary(max_size=64))
        else:
            files["../../escape"] = b"x"
    data = _tar(files)
    if target == "raw":
        cut = draw(hs.integers(0, len(data)))
        data = data[:cut] + draw(hs.binary(max_size=32))
    return data
