"""The layering of src/ketch (README "Layout", DESIGN "shape of the system"),
checked on every import: module-level and function-level alike, since most of
ketch's imports are inside functions to keep the start path lean, and a cycle
or an upward edge hidden there is as real as one at the top of a file.

Three rules:
- an import never points to a higher layer than its own module's;
- the module graph has no cycle (within a layer too);
- nobody uses another module's private names (``from m import _x``,
  ``m._x``), nor a private module (``_x.py``) outside its own package.

And one place for each of two things that were done in many:
- the signal module is imported only by ketch.linux.signals (``_signal``;
  ``signal`` builds an enum of every signal at import), everyone else takes
  it from there;
- each ``KETCH_*`` environment variable is read in one module, listed in
  ENVIRONMENT with what it is: settings of the user, never test hooks (a
  test hook in the shipped program could change what it does on a real host).

LAYERS is the one table of the layering; KNOWN lists edges that are allowed
on purpose, each with its reason (none today)."""

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")

# Lowest first.  A module's layer is the first prefix that matches it.
LAYERS = [
    ("base", ("ketch", "ketch.errors", "ketch.log", "ketch.trace", "ketch._json", "ketch.busybox")),
    ("linux", ("ketch.linux",)),
    ("spec", ("ketch.spec",)),
    ("process", ("ketch.process",)),
    ("runtime", ("ketch.runtime",)),
    ("engine", ("ketch.engine",)),
    ("cli", ("ketch.cli",)),
]

# (importer, imported module or module.name) -> why it is allowed.
KNOWN = {}

# The one module that imports the interpreter's signal module.
SIGNAL_MODULE = "ketch.linux.signals"

# KETCH_* environment variable -> (the one module that names it, what it is).
ENVIRONMENT = {
    "KETCH_TRACE": ("ketch.trace", "user setting: timestamps of a create's steps on stderr"),
    "KETCH_STORAGE_ROOT": ("ketch.engine.content", "user setting: the engine's storage root"),
    "KETCH_CNI_PATH": ("ketch.engine.network.cni", "user setting: where the CNI plugins are"),
    "KETCH_DEFAULT_SUBNET": ("ketch.engine.network", "user setting: the default network's subnet"),
    "KETCH_SEARCH_REGISTRIES": ("ketch.engine.registry.reference", "user setting: registries for short names"),
    "KETCH_REGISTRIES_ALLOWED": ("ketch.engine.registry.allow", "user setting: registries the engine may contact"),
    "KETCH_MONITOR_STATUS_FD": ("ketch.engine.containers",
                                "plumbing: the fd the engine hands its monitor process (set and read there)"),
}


def _modules():
    root = os.path.abspath(SRC)
    mods = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, "ketch")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                if name.endswith(".__init__"):
                    name = name[: -len(".__init__")]
                mods[name] = path
    return mods


MODULES = _modules()


def layer_of(mod):
    """The layer of the longest entry of LAYERS that is ``mod`` or a package
    above it (so "ketch" itself is base, and ketch.linux.x is linux)."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    if best is None or (best[1] == "ketch" and mod != "ketch"):
        raise AssertionError(f"{mod} is in no layer: add it to LAYERS")
    return best[0]


def _package(mod):
    return mod if MODULES[mod].endswith("__init__.py") else mod.rpartition(".")[0]


class Edge:
    def __init__(self, src, dst, name, line):
        self.src, self.dst, self.name, self.line = src, dst, name, line

    @property
    def target(self):
        return f"{self.dst}.{self.name}" if self.name else self.dst

    def __repr__(self):
        return f"{self.src}:{self.line} -> {self.target}"


def _edges(mod):
    """Every (module, name) that ``mod`` imports or reaches by attribute on an
    imported module; name is None for a whole module."""
    tree = ast.parse(open(MODULES[mod]).read(), MODULES[mod])
    out = []
    aliases = {}  # local name -> ketch module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ketch":
                    out.append(Edge(mod, a.name, None, node.lineno))
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = _package(mod).split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "ketch":
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in MODULES:
                    out.append(Edge(mod, full, None, node.lineno))
                    aliases[a.asname or a.name] = full
                else:
                    out.append(Edge(mod, base, a.name, node.lineno))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value in MODULES and node.value.startswith("ketch.")):
            # importlib by name (engine/__init__'s lazy attributes)
            out.append(Edge(mod, node.value, None, node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            out.append(Edge(mod, aliases[node.value.id], node.attr, node.lineno))
    return out


EDGES = [e for m in sorted(MODULES) for e in _edges(m)]


def _known(e):
    return (e.src, e.target) in KNOWN or (e.src, e.dst) in KNOWN


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_no_upward_import():
    bad = [e for e in EDGES if layer_of(e.dst) > layer_of(e.src) and not _known(e)]
    assert not bad, "imports from a higher layer:\n" + "\n".join(map(repr, bad))


def _private(e):
    if e.name and e.name.startswith("_") and not e.name.startswith("__") and e.dst != e.src:
        return True
    # A private module belongs to its package (ketch._json to all of ketch,
    # cli._create_flags to cli/).
    parts = e.dst.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            owner = ".".join(parts[:i])
            if not (e.src == owner or e.src.startswith(owner + ".")):
                return True
    return False


def test_no_private_use_across_modules():
    bad = [e for e in EDGES if _private(e) and not _known(e)]
    assert not bad, "use of another module's private names:\n" + "\n".join(map(repr, bad))


def test_no_cycle():
    graph = {}
    for e in EDGES:
        if e.dst != e.src and not _known(e):
            graph.setdefault(e.src, set()).add(e.dst)
    state, cycles = {}, []

    def visit(m, path):
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_known_exceptions_are_still_needed():
    pairs = {(e.src, e.target) for e in EDGES} | {(e.src, e.dst) for e in EDGES}
    stale = [k for k in KNOWN if k not in pairs]
    assert not stale, f"KNOWN lists edges that no longer exist: {stale}"


@pytest.mark.parametrize("mod", ["ketch.process.spawn", "ketch.process.init"])
def test_the_walk_sees_function_level_imports(mod):
    # The walk must not stop at module level: most imports are in functions.
    tree = ast.parse(open(MODULES[mod]).read())
    nested = [n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
              for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and n.level]
    assert nested
    assert {e.line for e in EDGES if e.src == mod} >= {n.lineno for n in nested}


def _imports_of(mod):
    tree = ast.parse(open(MODULES[mod]).read(), MODULES[mod])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module, node.lineno


def test_the_signal_module_is_imported_in_one_place():
    bad = [f"{m}:{line} imports {name}" for m in sorted(MODULES) for name, line in _imports_of(m)
           if name in ("signal", "_signal") and m != SIGNAL_MODULE]
    assert not bad, f"import signal through {SIGNAL_MODULE} (from ..linux.signals import signal):\n" + "\n".join(bad)


def _env_names(mod):
    """Every KETCH_* variable `mod` may read or set: a string that is exactly
    its name (``os.environ.get("KETCH_X")``, ``ENV = "KETCH_X"``) or a keyword
    (``dict(os.environ, KETCH_X=...)``); help texts and docstrings that
    mention one are not reads."""
    import re

    tree = ast.parse(open(MODULES[mod]).read(), MODULES[mod])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"KETCH_[A-Z0-9_]+", node.value):
            out.add(node.value)
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("KETCH_"):
            out.add(node.arg)
    return out


def test_each_environment_variable_is_read_in_its_one_module():
    seen = {}
    for m in sorted(MODULES):
        for name in _env_names(m):
            seen.setdefault(name, set()).add(m)
    unknown = sorted(set(seen) - set(ENVIRONMENT))
    assert not unknown, (f"KETCH_* variables not in ENVIRONMENT: {unknown}: a user setting goes in the "
                         "table; a test hook does not belong in src/ (see tests/support/)")
    for name, mods in sorted(seen.items()):
        assert mods == {ENVIRONMENT[name][0]}, f"{name} is read in {sorted(mods)}, not only in {ENVIRONMENT[name][0]}"
