"""The table-driven flag parser behaves like runc's (urfave/cli + Go flag)."""

import pytest

from ketch.cli.main import Flag, parse_flags, main
from ketch.errors import UsageError

FLAGS = [Flag(("--bundle", "-b"), "str", default="."), Flag(("--detach", "-d")),
         Flag(("--preserve-fds",), "int"), Flag(("--env", "-e"), "list")]


def test_forms():
    opts, rest = parse_flags(FLAGS, ["-b", "x", "--detach", "--preserve-fds=2", "-e", "A=1",
                                     "--env=B=2", "id", "--not-a-flag"], "t")
    assert opts == {"bundle": "x", "detach": True, "preserve_fds": 2, "env": ["A=1", "B=2"]}
    assert rest == ["id", "--not-a-flag"]


def test_stops_at_first_non_flag_and_double_dash():
    opts, rest = parse_flags(FLAGS, ["id", "-d"], "t")
    assert not opts["detach"] and rest == ["id", "-d"]
    opts, rest = parse_flags(FLAGS, ["--", "-d"], "t")
    assert rest == ["-d"]


def test_go_style_single_dash_long_flag():
    opts, _ = parse_flags(FLAGS, ["-bundle", "y", "-detach"], "t")
    assert opts["bundle"] == "y" and opts["detach"]


@pytest.mark.parametrize("argv,msg", [
    (["--nope"], "flag provided but not defined: --nope"),
    (["-b"], "flag needs an argument: -b"),
    (["--preserve-fds", "x"], "not a number"),
    (["--detach=maybe"], "invalid boolean"),
])
def test_errors(argv, msg):
    with pytest.raises(UsageError) as e:
        parse_flags(FLAGS, argv, "t")
    assert msg in str(e.value)


def test_bool_with_value():
    opts, _ = parse_flags(FLAGS, ["--detach=false"], "t")
    assert opts["detach"] is False


def test_main_version_and_unknown(capsys):
    assert main(["--version"]) == 0
    assert "ketch version" in capsys.readouterr().out
    assert main(["frob"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command" in err


def test_main_verb_help(capsys):
    assert main(["create", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--bundle" in out and "--console-socket" in out


def test_main_wrong_arg_count(capsys):
    assert main(["--root", "/nonexistent-ketch-root", "state"]) == 1
    assert "expected 1 argument" in capsys.readouterr().err


def _verb_raising(monkeypatch, exc):
    import ketch.cli.main as m

    mod = m.load_verb("state")
    monkeypatch.setattr(mod, "run", lambda g, opts, args: (_ for _ in ()).throw(exc))


def test_a_thread_that_cannot_start_is_one_error_line(monkeypatch, capsys):
    """threading raises RuntimeError("can't start new thread") when clone3
    fails (ENOMEM/EAGAIN): found by `make faults` as a traceback of `container
    commit`.  The CLI says it in one line and fails."""
    _verb_raising(monkeypatch, RuntimeError("can't start new thread"))
    assert main(["state", "x"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["ketch: state: cannot start a thread: out of memory or over the process limit"], err


def test_other_runtime_errors_are_not_disguised(monkeypatch):
    _verb_raising(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["state", "x"])


def test_an_error_the_container_reported_itself_is_not_repeated(monkeypatch, capsys):
    """`run` whose init died after writing its own reason (exit 127): the
    error is marked reported and the CLI adds no line of its own."""
    from ketch.errors import InvalidState

    e = InvalidState("cannot start container 'x': it has already run and stopped")
    e.reported = True
    _verb_raising(monkeypatch, e)
    assert main(["state", "x"]) == 1
    assert capsys.readouterr().err == ""
