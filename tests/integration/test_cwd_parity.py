"""process.cwd as runc treats it (issue 13 items 3 and 4), each scenario run
with ketch and with runc on the same bundle."""

import os
import stat

import pytest


@pytest.fixture(params=["ketch", "runc"])
def rt(request):
    return request.getfixturevalue(request.param)


def test_missing_cwd_is_created_in_the_rootfs(rt, own_bundle, cid):
    own_bundle.sh("pwd; stat -c '%a %u' .")
    own_bundle.process["cwd"] = "/made/here/deep"
    p = rt("run", "-b", own_bundle.write(), cid)
    assert p.stdout.splitlines() == ["/made/here/deep", "755 0"]
    made = os.path.join(own_bundle.rootfs, "made/here/deep")
    assert stat.S_ISDIR(os.lstat(made).st_mode)


def test_missing_cwd_through_a_symlink_stays_in_the_rootfs(rt, own_bundle, cid, tmp_path):
    """/work -> /../../outside: resolved inside the rootfs, never on the host."""
    os.symlink("/../../" + tmp_path.name + "-outside/w", os.path.join(own_bundle.rootfs, "work"))
    own_bundle.sh("pwd -P")
    own_bundle.process["cwd"] = "/work/sub"
    p = rt("run", "-b", own_bundle.write(), cid, check=False)
    assert not os.path.exists(str(tmp_path) + "-outside")
    if rt.name == "runc" and p.returncode != 0:
        # runc 1.1.5's MkdirAll does not follow a dangling link ("file exists").
        assert "file exists" in p.stderr
        return
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"/{tmp_path.name}-outside/w/sub"
    assert os.path.isdir(os.path.join(own_bundle.rootfs, f"{tmp_path.name}-outside/w/sub"))


def test_cwd_only_root_may_enter_with_an_unprivileged_user(rt, own_bundle, cid):
    """/root 0700, user 42: entered before the user changes, as runc does."""
    os.chmod(os.path.join(own_bundle.rootfs, "root"), 0o700)
    own_bundle.sh("pwd; id -u; ls . >/dev/null 2>&1 && echo listed || echo not-listed")
    own_bundle.process["cwd"] = "/root"
    own_bundle.process["user"] = {"uid": 42, "gid": 42}
    p = rt("run", "-b", own_bundle.write(), cid)
    assert p.stdout.splitlines() == ["/root", "42", "not-listed"]


def test_cwd_only_the_user_may_enter(rt, own_bundle, cid):
    """A directory the user owns (0700) that root squashing would refuse is
    still entered as the user; on a local filesystem root enters it anyway."""
    d = os.path.join(own_bundle.rootfs, "home", "u")
    os.makedirs(d)
    os.chown(d, 1000, 1000)
    os.chmod(d, 0o700)
    own_bundle.sh("pwd; id -u")
    own_bundle.process["cwd"] = "/home/u"
    own_bundle.process["user"] = {"uid": 1000, "gid": 1000}
    p = rt("run", "-b", own_bundle.write(), cid)
    assert p.stdout.splitlines() == ["/home/u", "1000"]


def test_cwd_that_is_a_file_fails(rt, own_bundle, cid):
    own_bundle.args("true")
    own_bundle.process["cwd"] = "/bin/sh"
    p = rt("run", "-b", own_bundle.write(), cid, check=False)
    assert p.returncode != 0
    assert "not a directory" in p.stderr, p.stderr
    assert cid not in rt.ids()


def test_a_seccomp_profile_refusing_getcwd_does_not_stop_the_cwd_check(ketch, bundle, cid):
    """The cwd is checked to be inside the root (CVE-2024-21626) before the
    seccomp filter is loaded: a profile may refuse getcwd(2) itself, as the
    runtime-tools suite's linux_seccomp does, and the process must still run
    (and have getcwd refused)."""
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    # Without no_new_privs the filter is loaded early, while the init still
    # holds CAP_SYS_ADMIN: that is the order where the check could meet it.
    bundle.process["noNewPrivileges"] = False
    bundle.process["cwd"] = "/tmp"
    bundle.sh("pwd -P; echo rc=$?")
    p = ketch("run", "--bundle", bundle.write(), cid, check=False)
    assert p.returncode == 0, p.stderr
    assert "rc=" in p.stdout and "/tmp" not in p.stdout.replace("rc=", ""), p.stdout
