"""The security suite: one test module per runc CVE class, named by CVE number.

Tests run real containers as root, exactly as the integration tests do, with
the same fixtures and the same leak checks (no mount, process, cgroup or state
left behind).  Each test puts a sentinel file outside the rootfs and asserts,
from the host, that the container could neither read nor write it.
"""

from integration.conftest import *  # noqa: F401,F403  (fixtures, leak checks)
import os as _os

import pytest as _pytest


def pytest_collection_modifyitems(config, items):
    if _os.geteuid() != 0:
        skip = _pytest.mark.skip(reason="the security suite runs real containers and needs root")
        for item in items:
            if "security" in str(item.fspath):
                item.add_marker(skip)


@_pytest.fixture(autouse=True)
def _own_network_namespace(testns):
    """Engine containers attach to the default bridge: it, its rules and ip_forward are
    made in a network namespace of the test's own (the traffic rule), never the host's."""
    yield
