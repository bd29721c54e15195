"""Bad input: one clear line on stderr, a non-zero exit, nothing left behind."""

import json
import os

import pytest


def _one_line_error(p, *words):
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def _write_raw(bundle, text):
    with open(os.path.join(bundle.path, "config.json"), "w") as f:
        f.write(text)


@pytest.mark.parametrize("verb", ["create", "run"])
def test_broken_json(ketch, bundle, verb, cid):
    _write_raw(bundle, '{"ociVersion": "1.0.2", "root": ')
    p = ketch(verb, "-b", bundle.path, cid, check=False)
    _one_line_error(p, "config.json", "invalid JSON")
    assert ketch.ids() == []


@pytest.mark.parametrize("mutate,words", [
    (lambda c: c.pop("root"), ["root", "required"]),
    (lambda c: c["process"].pop("args"), ["process.args", "required"]),
    (lambda c: c["process"].__setitem__("args", "sh"), ["process.args", "list"]),
    (lambda c: c["process"].__setitem__("args", []), ["process.args", "non-empty"]),
    (lambda c: c["process"].__setitem__("cwd", "relative"), ["process.cwd", "absolute"]),
    (lambda c: c.__setitem__("ociVersion", "2.0.0"), ["ociVersion", "not supported"]),
    (lambda c: c.__setitem__("mounts", [{"type": "tmpfs"}]), ["mounts[0].destination", "required"]),
    (lambda c: c["process"]["user"].__setitem__("uid", "0"), ["process.user.uid", "integer"]),
    (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), ["namespace", "bogus"]),
    (lambda c: c["linux"].__setitem__("namespaces", [{"type": "pid"}]), ["mount namespace"]),
    (lambda c: c["root"].__setitem__("path", "/nonexistent/rootfs"), ["rootfs", "does not exist"]),
    (lambda c: c["root"].__setitem__("path", "/etc/passwd"), ["rootfs", "not a directory"]),
])
def test_bad_config(ketch, bundle, mutate, words, cid):
    mutate(bundle.config)
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    _one_line_error(p, *words)
    assert ketch.ids() == []


def test_missing_config(ketch, tmp_path, cid):
    p = ketch("create", "-b", str(tmp_path), cid, check=False)
    _one_line_error(p, "config.json")


@pytest.mark.parametrize("cid", ["", "../evil", "a/b", "/abs", ".", "..", "-x", "a\nb"])
def test_bad_container_id(ketch, bundle, cid, runtime_root):
    bundle.args("true").write()
    p = ketch("create", "-b", bundle.path, "--", cid, check=False) if cid.startswith("-") else \
        ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert os.listdir(runtime_root) == []
    assert not os.path.exists(os.path.join(os.path.dirname(runtime_root), "evil"))


def test_container_id_in_use(ketch, bundle, cid):
    bundle.args("sleep", "100").write()
    ketch("create", "-b", bundle.path, cid, stdout=-3, stderr=-3)
    p = ketch("create", "-b", bundle.path, cid, check=False)
    _one_line_error(p, cid, "already exists")
    assert ketch.status(cid) == "created"
    ketch("delete", cid)


@pytest.mark.parametrize("argv,words", [
    (["frobnicate"], ["unknown command", "frobnicate"]),
    (["create", "--nope", "x"], ["flag provided but not defined", "--nope"]),
    (["state"], ["expected 1 argument"]),
    (["kill", "nosuch"], ["nosuch", "does not exist"]),
    (["state", "nosuch"], ["nosuch", "does not exist"]),
    (["delete", "nosuch"], ["nosuch", "does not exist"]),
    (["--log-format", "xml", "list"], ["log format"]),
])
def test_bad_command_line(ketch, argv, words):
    p = ketch(*argv, check=False)
    _one_line_error(p, *words)


def test_unknown_signal(ketch, bundle, cid):
    bundle.args("sleep", "100").write()
    ketch("create", "-b", bundle.path, cid, stdout=-3, stderr=-3)
    p = ketch("kill", cid, "SIGFOO", check=False)
    _one_line_error(p, "unknown signal", "SIGFOO")
    assert ketch.status(cid) == "created"
    ketch("delete", cid)


def test_errors_reach_json_log(ketch, bundle, tmp_path, cid):
    log = tmp_path / "log.json"
    _write_raw(bundle, "{")
    p = ketch("--log", str(log), "--log-format", "json", "create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["level"] == "error" and "invalid JSON" in rec["msg"] and rec["time"]
