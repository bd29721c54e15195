import os
import resource

import pytest

from ketch.errors import ConfigError, SetupError
from ketch.linux import capabilities, rlimits

from forkutil import in_child


def test_table_has_every_oci_rlimit_with_kernel_numbers():
    assert len(rlimits.NAMES) == 16
    assert rlimits.NAMES["RLIMIT_NOFILE"] == resource.RLIMIT_NOFILE
    assert rlimits.NAMES["RLIMIT_CORE"] == resource.RLIMIT_CORE
    assert rlimits.NAMES["RLIMIT_RTTIME"] == resource.RLIMIT_RTTIME


def test_parse_maps_u64_max_to_infinity():
    got = rlimits.parse([{"type": "RLIMIT_CORE", "soft": 0, "hard": 2**64 - 1}])
    assert got == [(resource.RLIMIT_CORE, "RLIMIT_CORE", 0, resource.RLIM_INFINITY)]


@pytest.mark.parametrize("rl, msg", [
    ({"type": "RLIMIT_FOO", "soft": 1, "hard": 1}, "unknown rlimit type 'RLIMIT_FOO'"),
    ({"type": "nofile", "soft": 1, "hard": 1}, "unknown rlimit type"),
    ({"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}, "soft limit 10 is above the hard limit 5"),
    ({"type": "RLIMIT_NOFILE", "soft": -1, "hard": 5}, "unsigned 64-bit"),
    ({"type": "RLIMIT_NOFILE", "soft": "5", "hard": 5}, "unsigned 64-bit"),
])
def test_parse_errors(rl, msg):
    with pytest.raises(ConfigError, match=msg):
        rlimits.parse([rl])


def test_duplicate_type_is_an_error():
    rl = {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}
    with pytest.raises(ConfigError, match="given twice"):
        rlimits.parse([rl, rl])


def test_apply_in_child_lowers_limits():
    def child():
        rlimits.apply([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
                       {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}])
        return resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CORE)

    assert in_child(child) == ((100, 200), (0, 0))


def test_raising_hard_limit_without_cap_sys_resource_names_the_limit():
    def child():
        eff, prm, inh = capabilities._libc.capget()
        sys_resource = 1 << capabilities.BY_NAME["CAP_SYS_RESOURCE"]
        capabilities._libc.capset(eff & ~sys_resource, prm & ~sys_resource, inh & ~sys_resource)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            rlimits.apply([{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}])
        except SetupError as e:
            return hard, str(e)
        return hard, None

    hard, msg = in_child(child)
    assert msg is not None
    assert msg.startswith(f"set RLIMIT_NOFILE soft {hard + 1} hard {hard + 1}: operation not permitted")
    assert f"the hard limit is {hard}" in msg and "CAP_SYS_RESOURCE" in msg
