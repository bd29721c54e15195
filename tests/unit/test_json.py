"""ketch._json matches the json module, without importing it on the start path."""

import json
import subprocess
import sys

import pytest

from ketch import _json

SAMPLES = [
    {"z": {"b": 1, "a": [{"y": 2, "x": None}]}, "a": 0, "m": {}},
    {"a": 1, "b": [1, 2.5, -3e10, True, False, None], "c": {"d": "é\u2028\"\\\n"}, "": []},
    [], {}, "x", 0, -1, 1.0, 12345678901234567890, [{"k": [{}]}],
    {"ociVersion": "1.0.2", "process": {"args": ["sh", "-c", "echo hi"], "env": ["A=b c"]}},
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_roundtrip_and_same_text(obj):
    for seps in ((",", ":"), None):
        kw = {"separators": seps} if seps else {}
        assert _json.dumps(obj, **kw) == json.dumps(obj, **kw)
    assert _json.dumps(obj, indent=2) == json.dumps(obj, indent=2)
    # sort_keys: the engine's digests of image configs depend on it byte for byte
    for kw in ({"separators": (",", ":")}, {}, {"indent": 1}):
        assert _json.dumps(obj, sort_keys=True, **kw) == json.dumps(obj, sort_keys=True, **kw)
    assert _json.loads(json.dumps(obj)) == obj
    assert _json.loads(json.dumps(obj).encode()) == obj


@pytest.mark.parametrize("text", ['{"a": ', "", "  ", "[1,]", '{"a" 1}', "[1] x", '"\\q"', "nul"])
def test_errors_are_value_errors(text):
    with pytest.raises(ValueError) as e:
        _json.loads(text)
    with pytest.raises(ValueError):
        json.loads(text)
    assert str(e.value)


def test_not_utf8():
    with pytest.raises(ValueError, match="UTF-8"):
        _json.loads(b"\xff\xfe{}")


def test_does_not_import_re():
    import os

    import ketch

    src = os.path.dirname(os.path.dirname(ketch.__file__))
    code = "import sys, ketch._json as j; j.loads(j.dumps({'a': [1]})); print('re' in sys.modules)"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": src})
    assert out.stdout.strip() == "False", out.stderr


def test_syntax_error_message_in_a_bare_interpreter():
    """Under -I -S (the launcher) the C scanner cannot word some errors itself."""
    import os

    import ketch

    src = os.path.dirname(os.path.dirname(ketch.__file__))
    code = ("import ketch._json as j\nfor t in ('{', '[1 2]', '{\"a\" 1}'):\n"
            "    try:\n        j.loads(t)\n    except ValueError as e:\n        print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {src!r})\n" + code],
                         capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stderr
    assert all(line.startswith("JSONDecodeError") and "char" in line for line in lines)
