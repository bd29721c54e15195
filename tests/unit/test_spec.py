"""config.json validation: each error names the field."""

import copy
import json

import pytest

from ketch import spec
from ketch.errors import ConfigError
from ketch.spec.default import default_spec


def test_default_spec_is_valid_and_matches_runc_shape():
    cfg = default_spec()
    spec.validate(cfg)
    assert cfg["process"]["terminal"] is True
    assert [m["destination"] for m in cfg["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts", "mount"}


def test_rootless_spec_has_user_namespace_and_maps():
    cfg = default_spec(rootless=True)
    spec.validate(cfg)
    assert {"type": "user"} in cfg["linux"]["namespaces"]
    assert cfg["linux"]["uidMappings"][0]["size"] == 1
    assert "resources" not in cfg["linux"]


def _mut(path, value):
    cfg = default_spec()
    d = cfg
    for k in path[:-1]:
        d = d[k]
    if value is KeyError:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return cfg


@pytest.mark.parametrize("path,value,words", [
    (("ociVersion",), "0.9", "not supported"),
    (("ociVersion",), KeyError, "ociVersion: is required"),
    (("root",), "rootfs", "root: must be an object"),
    (("process", "args"), ["sh", 1], "process.args: must be a list of strings"),
    (("process", "user", "gid"), -1, "process.user.gid: must be >= 0"),
    (("process", "rlimits"), [{"type": "RLIMIT_NOFILE", "hard": 1}], "rlimits[0].soft: is required"),
    (("hooks",), {"prestart": [{"args": []}]}, "hooks.prestart[0].path: is required"),
    (("linux", "devices"), [{"path": "/dev/x", "type": "z"}], "unknown device type"),
    (("linux", "rootfsPropagation"), "sideways", "unknown propagation"),
    (("mounts",), [{"destination": ""}], "must not be empty"),
])
def test_errors_name_the_field(path, value, words):
    with pytest.raises(ConfigError) as e:
        spec.validate(_mut(path, value))
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_user_namespace_needs_mappings():
    cfg = default_spec()
    cfg["linux"]["namespaces"].append({"type": "user"})
    with pytest.raises(ConfigError, match="uidMappings"):
        spec.validate(cfg)
    cfg["linux"]["namespaces"][-1]["path"] = "/proc/1/ns/user"
    spec.validate(cfg)


def test_duplicate_namespace():
    cfg = default_spec()
    cfg["linux"]["namespaces"].append({"type": "pid"})
    with pytest.raises(ConfigError, match="twice"):
        spec.validate(cfg)


def test_load_reports_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text('{"a": ')
    with pytest.raises(ConfigError, match="invalid JSON"):
        spec.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(default_spec()))
    assert spec.load(str(tmp_path))["ociVersion"]


def test_namespaces_map():
    cfg = copy.deepcopy(default_spec())
    cfg["linux"]["namespaces"][1]["path"] = "/run/netns/x"
    assert spec.namespaces(cfg) == {"pid": "", "network": "/run/netns/x", "ipc": "", "uts": "", "mount": ""}
