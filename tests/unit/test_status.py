"""The status table: every (from, to) pair and every (verb, status) pair."""

import itertools

import pytest

from ketch.errors import InvalidState, NotRunning
from ketch.runtime import status as st

ALLOWED = {
    ("creating", "created"), ("creating", "stopped"),
    ("created", "running"), ("created", "stopped"),
    ("running", "paused"), ("running", "stopped"),
    ("paused", "running"), ("paused", "stopped"),
}


@pytest.mark.parametrize("src,dst", list(itertools.product(st.ALL, st.ALL)))
def test_every_transition_pair(src, dst):
    assert st.can_transition(src, dst) == ((src, dst) in ALLOWED)


@pytest.mark.parametrize("verb,status", list(itertools.product(
    ["start", "kill", "delete", "pause", "resume", "exec"], st.ALL)))
def test_every_verb_status_pair(verb, status):
    ok = {
        "start": {"created"},
        "kill": {"created", "running", "paused"},
        "delete": {"stopped"},
        "pause": {"running"},
        "resume": {"paused"},
        "exec": {"created", "running"},
    }[verb]
    if status in ok:
        st.check_verb(verb, status, "c")
    else:
        with pytest.raises(InvalidState) as e:
            st.check_verb(verb, status, "c")
        if status == "stopped" and verb not in ("delete", "start"):
            assert isinstance(e.value, NotRunning)
            # runc's words, which containerd's shim matches
            assert str(e.value) == "container not running"
        else:
            assert "'c'" in str(e.value)
