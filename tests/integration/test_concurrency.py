"""Many commands at once (issue 18), bounded; `make stress` runs the issue's
full numbers (50 on one container, 100 creates)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import concurrency  # noqa: E402
import faults  # noqa: E402

# The traffic rule: engine containers join the default bridge, which must
# live in a network namespace of the test's own (conftest.testns_module).
pytestmark = pytest.mark.usefixtures("testns_module")


@pytest.fixture(scope="module")
def env():
    e = faults.Env()
    yield e
    e.close()


def test_kill_delete_state_exec_at_once_on_one_container(env):
    _, problems = concurrency.same_container(env, int(os.environ.get("KETCH_SAME", 24)))
    assert not problems, "\n".join(problems)


def test_creates_at_once_with_different_ids(env):
    _, problems = concurrency.many_creates(env, int(os.environ.get("KETCH_CREATES", 20)))
    assert not problems, "\n".join(problems)


def test_engine_imports_one_image_twice_at_once(env):
    problems = concurrency.engine_import_twice(env)
    assert not problems, "\n".join(problems)


def test_engine_rm_racing_run(env):
    problems = concurrency.engine_rm_races_run(env, rounds=2)
    assert not problems, "\n".join(problems)


def test_engine_stop_racing_the_containers_exit(env):
    problems = concurrency.engine_stop_races_exit(env, rounds=2)
    assert not problems, "\n".join(problems)


def test_engine_pulls_one_image_twice_at_once(env):
    reg = concurrency.registry()
    try:
        problems = concurrency.engine_pull_twice(env, reg)
    finally:
        concurrency.stop_registry(reg)
    assert not problems, "\n".join(problems)
