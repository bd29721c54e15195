"""ketch.linux.label without root: selinuxfs is a temp dir (support.selinux.FakeSelinux), xattrs a
recording fake."""

import errno
import multiprocessing
import os
import pathlib

import pytest

from ketch.errors import ConfigError, SecurityError, SetupError
from ketch.linux import label as L
from ketch.runtime import mcs
from support.selinux import FakeSelinux, installed


@pytest.fixture(autouse=True)
def host_kernel():
    """Every test starts from the host's own (a fresh detection), restored after."""
    with installed(L.Kernel()):
        yield


@pytest.fixture
def fake(tmp_path):
    d = tmp_path / "selinuxfs"
    d.mkdir()
    (d / "enforce").write_text("1")
    with installed(FakeSelinux(d)) as k:
        yield k


@pytest.fixture
def fakefs(fake):
    return pathlib.Path(fake.fsdir)


@pytest.fixture
def off():
    with installed(FakeSelinux("")):
        yield


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "state")


class FakeXattrs:
    """Stands in for os.setxattr/os.getxattr: security.* needs CAP_SYS_ADMIN."""

    def __init__(self):
        self.store = {}
        self.calls = []
        self.fail = None

    def _key(self, path, follow):
        path = os.path.abspath(path)
        return os.path.realpath(path) if follow else path

    def setxattr(self, path, name, value, flags=0, *, follow_symlinks=True):
        self.calls.append((path, name, value, follow_symlinks))
        if self.fail:
            raise OSError(self.fail, os.strerror(self.fail), path)
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self.store[(self._key(path, follow_symlinks), name)] = value

    def getxattr(self, path, name, *, follow_symlinks=True):
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        try:
            return self.store[(self._key(path, follow_symlinks), name)]
        except KeyError:
            raise OSError(errno.ENODATA, "No data available", path) from None

    def raw(self, path, follow=False):
        return self.store.get((self._key(str(path), follow), L.XATTR_NAME))


@pytest.fixture
def xattrs(monkeypatch):
    fake = FakeXattrs()
    monkeypatch.setattr(os, "setxattr", fake.setxattr)
    monkeypatch.setattr(os, "getxattr", fake.getxattr)
    return fake


def level_of(label):
    return label.split(":", 3)[3]


# ---- enabled -------------------------------------------------------------------

def test_enabled_with_fake_selinuxfs(fakefs):
    assert L.enabled()
    assert L.selinuxfs() == str(fakefs)


def test_disabled_without_enforce_file(fakefs):
    (fakefs / "enforce").unlink()
    assert not L.enabled()
    assert L.selinuxfs() == ""


def test_disabled_when_forced_off_or_missing(fake, tmp_path):
    fake.fsdir = ""
    assert not L.enabled()
    fake.fsdir = str(tmp_path / "nope")
    assert not L.enabled()


def test_enforce_must_be_a_file(fakefs):
    (fakefs / "enforce").unlink()
    (fakefs / "enforce").mkdir()
    assert not L.enabled()


def test_real_detection_matches_kernel():
    with open("/proc/filesystems") as f:
        kernel_has_it = "selinuxfs" in f.read()
    found = L.Kernel().selinuxfs()
    if not kernel_has_it:
        assert found == ""
    else:
        assert found == "" or os.path.isfile(os.path.join(found, "enforce"))


def test_mountinfo_unescape():
    # label finds selinuxfs in mountinfo with the one unescaper of ketch.linux.mounts
    from ketch.linux.mounts import unescape_mountinfo

    assert unescape_mountinfo(r"/a\040b\134c") == "/a b\\c"
    assert unescape_mountinfo("/plain") == "/plain"
    assert unescape_mountinfo("/end\\04") == "/end\\04"


# ---- init_labels ----------------------------------------------------------------

def test_init_labels_off_touches_nothing(off, state):
    assert mcs.init_labels([], state) == ("", "")
    assert mcs.init_labels(["level:s0:c1,c2", "type:x_t"], state) == ("", "")
    assert not os.path.exists(state)


def test_init_labels_defaults_and_fresh_pair(fakefs, state):
    proc, mnt = mcs.init_labels([], state)
    assert proc.startswith("system_u:system_r:container_t:s0:c")
    assert mnt.startswith("system_u:object_r:container_file_t:s0:c")
    level = level_of(proc)
    assert level == level_of(mnt)
    x, y = (int(c[1:]) for c in level[3:].split(","))
    assert 0 <= x < y <= 1023
    assert mcs.reserved_levels(state) == [level]
    lock = os.path.join(state, "selinux", "mcs.lock")
    assert os.stat(os.path.join(state, "selinux")).st_mode & 0o777 == 0o700
    assert os.path.exists(lock)


def test_init_labels_reads_lxc_contexts_in_selinuxfs_dir(fakefs, state):
    (fakefs / "lxc_contexts").write_text(
        '# comment\nprocess = "u_u:r_r:proc_t:s0"\ncontent = "x:y:z:s0"\n'
        "file='u_u:object_r:file_t:s0'  # trailing\n\n")
    proc, mnt = mcs.init_labels([], state)
    assert proc.startswith("u_u:r_r:proc_t:s0:c")
    assert mnt.startswith("u_u:object_r:file_t:s0:c")


def test_init_labels_contexts_path_overrides(fake, fakefs, state, tmp_path):
    (fakefs / "lxc_contexts").write_text('process = "a:b:ignored_t:s0"\n')
    other = tmp_path / "ctx"
    other.write_text('process = "a:b:chosen_t:s0"\nfile = "a:object_r:chosen_file_t:s0"\n')
    fake.contexts = str(other)
    proc, mnt = mcs.init_labels([], state)
    assert proc.split(":")[2] == "chosen_t"
    assert mnt.split(":")[2] == "chosen_file_t"


def test_init_labels_missing_keys_fall_back(fakefs, state):
    (fakefs / "lxc_contexts").write_text('content = "x:y:z:s0"\n')
    proc, mnt = mcs.init_labels(["level:s0"], state)
    assert (proc, mnt) == (L.DEFAULT_PROCESS_LABEL, L.DEFAULT_FILE_LABEL)


def test_init_labels_options(fakefs, state):
    proc, mnt = mcs.init_labels(["user:me_u", "role:me_r", "type:me_t", "filetype:me_file_t"], state)
    p, m = proc.split(":", 3), mnt.split(":", 3)
    assert p[:3] == ["me_u", "me_r", "me_t"]
    assert m[:3] == ["me_u", "object_r", "me_file_t"]
    assert p[3] == m[3] and p[3].startswith("s0:c")


def test_init_labels_string_option(fakefs, state):
    proc, _ = mcs.init_labels("type:one_t", state)
    assert proc.split(":")[2] == "one_t"


def test_level_s0_reserves_nothing(fakefs, state):
    assert mcs.init_labels(["level:s0"], state) == (L.DEFAULT_PROCESS_LABEL, L.DEFAULT_FILE_LABEL)
    assert mcs.reserved_levels(state) == []


def test_explicit_pair_counted_per_holder(fakefs, state):
    a, _ = mcs.init_labels(["level:s0:c9,c5"], state)
    b, _ = mcs.init_labels(["level:s0:c5,c9"], state)
    assert level_of(a) == level_of(b) == "s0:c5,c9"
    assert mcs.reserved_levels(state) == ["s0:c5,c9", "s0:c5,c9"]
    mcs.release_labels(a, state)
    assert mcs.reserved_levels(state) == ["s0:c5,c9"]
    mcs.release_labels(b, state)
    assert mcs.reserved_levels(state) == []


def test_explicit_other_levels_not_tracked(fakefs, state):
    for lvl in ("s0-s0:c0.c1023", "s0:c3", "s0:c7,c7", "s0:c1,c2000", "s1:c1,c2"):
        proc, mnt = mcs.init_labels([f"level:{lvl}"], state)
        assert level_of(proc) == level_of(mnt) == lvl
    assert mcs.reserved_levels(state) == []


def test_disable_option(fakefs, state):
    assert mcs.init_labels(["disable"], state) == ("", "")
    assert mcs.init_labels(["type:x_t", "disable"], state) == ("", "")
    assert not os.path.exists(state)


@pytest.mark.parametrize("opt", ["bogus:x", "types:x", "user", "disabled", "label=user:x", "user:",
                                 "type:a b", 'type:x"', "type:x:y", "level:s0;c1", "user:a,b", ""])
def test_bad_options(fakefs, state, opt):
    with pytest.raises(ConfigError) as ei:
        mcs.init_labels(["level:s0:c1,c2", opt], state)
    assert "SELinux label option" in str(ei.value)
    assert not os.path.exists(state)


def test_bad_options_rejected_even_when_off(off, state):
    with pytest.raises(ConfigError):
        mcs.init_labels(["nope:x"], state)


def test_mls_off_gives_no_categories(fakefs, state):
    (fakefs / "mls").write_text("0")
    assert mcs.init_labels([], state) == (L.DEFAULT_PROCESS_LABEL, L.DEFAULT_FILE_LABEL)
    assert mcs.reserved_levels(state) == []


def test_non_mls_contexts(fakefs, state):
    (fakefs / "lxc_contexts").write_text('process = "u:r:t"\nfile = "u:object_r:f"\n')
    assert mcs.init_labels([], state) == ("u:r:t", "u:object_r:f")
    assert mcs.reserved_levels(state) == []


def test_many_labels_unique_and_released(fakefs, state):
    labels = [mcs.init_labels([], state)[0] for _ in range(1500)]
    levels = [level_of(p) for p in labels]
    assert len(set(levels)) == 1500
    assert sorted(mcs.reserved_levels(state)) == sorted(levels)
    for p in labels[:1000]:
        mcs.release_labels(p, state)
    assert sorted(mcs.reserved_levels(state)) == sorted(levels[1000:])


def test_reservations_survive_restart(fakefs, state):
    proc, _ = mcs.init_labels([], state)
    # A new ketch process knows only the file: simulate by reading it fresh.
    with open(os.path.join(state, "selinux", "mcs")) as f:
        assert f.read().split() == [level_of(proc)]


def test_allocation_skips_every_reserved_pair(fakefs, state):
    d = os.path.join(state, "selinux")
    os.makedirs(d)
    free = (517, 1000)
    with open(os.path.join(d, "mcs"), "w") as f:
        for x in range(1024):
            f.write("".join(f"s0:c{x},c{y}\n" for y in range(x + 1, 1024) if (x, y) != free))
    proc, _ = mcs.init_labels([], state)
    assert level_of(proc) == "s0:c517,c1000"
    with pytest.raises(SetupError) as ei:
        mcs.init_labels([], state)
    assert "all 523776 category pairs in use" in str(ei.value)


def test_torn_line_ignored(fakefs, state):
    proc, _ = mcs.init_labels([], state)
    with open(os.path.join(state, "selinux", "mcs"), "a") as f:
        f.write("s0:c1,c2")  # no newline: an append cut short by a crash
    assert mcs.reserved_levels(state) == [level_of(proc)]
    mcs.init_labels(["level:s0:c3,c4"], state)
    assert mcs.reserved_levels(state) == [level_of(proc), "s0:c3,c4"]


def _worker(args):
    # forked: the stand-in installed in the parent answers here too
    state, n = args
    return [mcs.init_labels([], state)[0] for _ in range(n)]


def test_parallel_processes_never_collide(fakefs, state, monkeypatch):
    # 32 categories give 496 pairs: 480 picks without a working lock collide.
    monkeypatch.setattr(L, "MCS_MAX", 32)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        results = pool.map(_worker, [(state, 60)] * 8)
    levels = [level_of(p) for r in results for p in r]
    assert len(levels) == 480
    assert len(set(levels)) == 480
    assert sorted(mcs.reserved_levels(state)) == sorted(levels)


def _release_worker(args):
    state, labels = args
    for p in labels:
        mcs.release_labels(p, state)
    return [mcs.init_labels([], state)[0] for _ in range(len(labels))]


def test_parallel_release_and_reserve(fakefs, state):
    held = [mcs.init_labels([], state)[0] for _ in range(200)]
    ctx = multiprocessing.get_context("fork")
    chunks = [held[i::4] for i in range(4)]
    with ctx.Pool(4) as pool:
        results = pool.map(_release_worker, [(state, c) for c in chunks])
    new = [level_of(p) for r in results for p in r]
    assert len(set(new)) == 200
    assert sorted(mcs.reserved_levels(state)) == sorted(new)


def test_release_noops(fakefs, state, tmp_path):
    mcs.release_labels("", state)
    mcs.release_labels("u:r:t:s0:c1,c2", state)
    mcs.release_labels("u:r:t", state)
    assert not os.path.exists(state)
    proc, _ = mcs.init_labels([], state)
    mcs.release_labels("u:r:t:s0:c1,c1023" if level_of(proc) != "s0:c1,c1023" else "u:r:t:s0:c2,c3", state)
    assert mcs.reserved_levels(state) == [level_of(proc)]


def test_release_works_when_off(fake, state):
    proc, _ = mcs.init_labels([], state)
    fake.fsdir = ""
    mcs.release_labels(proc, state)
    assert mcs.reserved_levels(state) == []


def test_default_state_root(fakefs, monkeypatch, tmp_path):
    monkeypatch.setattr(mcs, "DEFAULT_STATE_ROOT", str(tmp_path / "root"))
    proc, _ = mcs.init_labels([])
    assert mcs.reserved_levels() == [level_of(proc)]
    assert os.path.exists(tmp_path / "root" / "selinux" / "mcs")
    mcs.release_labels(proc)
    assert mcs.reserved_levels() == []


# ---- format_mount_label ---------------------------------------------------------

LBL = "system_u:object_r:container_file_t:s0:c1,c2"


@pytest.mark.parametrize("data,expected", [
    ("", f'context="{LBL}"'),
    (None, f'context="{LBL}"'),
    ("mode=755", f'mode=755,context="{LBL}"'),
    ("mode=755,size=65536k", f'mode=755,size=65536k,context="{LBL}"'),
    ("mode=755,", f'mode=755,context="{LBL}"'),
])
def test_format_mount_label(fakefs, data, expected):
    assert L.format_mount_label(data, LBL) == expected


def test_format_mount_label_rootcontext(fakefs):
    assert L.format_mount_label("mode=755", LBL, "rootcontext") == f'mode=755,rootcontext="{LBL}"'
    assert L.format_mount_label(f'context="{LBL}"', LBL, "rootcontext") == f'context="{LBL}",rootcontext="{LBL}"'


def test_format_mount_label_keeps_user_context(fakefs):
    for data in ('mode=1777,context="a:b:c:s0:c3,c4"', 'fscontext="a:b:c:s0",mode=1777', "defcontext=a:b:c:s0"):
        assert L.format_mount_label(data, LBL) == data
    data = 'rootcontext="a:b:c:s0:c3,c4",mode=1777'
    assert L.format_mount_label(data, LBL, "rootcontext") == data
    assert L.format_mount_label(data, LBL) == f'{data},context="{LBL}"'


def test_format_mount_label_quoted_commas_not_options(fakefs):
    # "c2,context=x" inside quotes is part of the label, not an option.
    data = 'rootcontext="a:b:c:s0:c1,context=x"'
    assert L._split_mount_data(data) == [data]
    assert L.format_mount_label(data, LBL) == f'{data},context="{LBL}"'


def test_format_mount_label_noops(fake):
    assert L.format_mount_label("mode=755", "") == "mode=755"
    assert L.format_mount_label("", "") == ""
    fake.mount_context_on = False
    assert L.format_mount_label("mode=755", LBL) == "mode=755"
    fake.fsdir = ""
    fake.mount_context_on = True
    assert L.format_mount_label("mode=755", LBL) == "mode=755"
    assert L.format_mount_label(None, LBL) == ""


def test_format_mount_label_bad_input(fakefs):
    with pytest.raises(ConfigError):
        L.format_mount_label("", LBL, "fcontext")
    for bad in ('a:b:c:s0",nosuid', "a:b:c\0", "a:b\nc"):
        with pytest.raises(ConfigError):
            L.format_mount_label("mode=755", bad)


# ---- file labels ----------------------------------------------------------------

def test_set_and_read_file_label(fakefs, xattrs, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    L.set_file_label(str(f), LBL)
    assert xattrs.raw(f) == LBL.encode() + b"\0"
    assert L.file_label(str(f)) == LBL


def test_file_label_follow_symlinks(fakefs, xattrs, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    link = tmp_path / "l"
    link.symlink_to("f")
    L.set_file_label(str(link), "a:b:link_t:s0", follow_symlinks=False)
    L.set_file_label(str(link), "a:b:target_t:s0")
    assert L.file_label(str(link), follow_symlinks=False) == "a:b:link_t:s0"
    assert L.file_label(str(f)) == "a:b:target_t:s0"
    assert L.file_label(str(link)) == "a:b:target_t:s0"


def test_file_label_unlabeled_and_unterminated(fakefs, xattrs, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert L.file_label(str(f)) == ""
    xattrs.store[(str(f), L.XATTR_NAME)] = b"a:b:c:s0"  # written by a tool without the NUL
    assert L.file_label(str(f)) == "a:b:c:s0"


def test_file_label_enotsup_is_empty(fakefs, monkeypatch, tmp_path):
    def nosup(*a, **k):
        raise OSError(errno.ENOTSUP, "Operation not supported", a[0])
    monkeypatch.setattr(os, "getxattr", nosup)
    assert L.file_label(str(tmp_path)) == ""


def test_file_label_other_errors_raise(fakefs, xattrs, tmp_path):
    with pytest.raises(OSError):
        L.file_label(str(tmp_path / "missing"))


def test_set_file_label_noops(fake, xattrs, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    L.set_file_label(str(f), "")
    fake.fsdir = ""
    L.set_file_label(str(f), LBL)
    assert xattrs.calls == []
    xattrs.store[(str(f), L.XATTR_NAME)] = b"a:b:c:s0\0"
    assert L.file_label(str(f)) == ""


def test_set_file_label_errors(fakefs, xattrs, tmp_path):
    with pytest.raises(SetupError) as ei:
        L.set_file_label(str(tmp_path / "missing"), LBL)
    assert str(ei.value) == f"set SELinux label {LBL} on {tmp_path / 'missing'}: no such file or directory"
    assert isinstance(ei.value.__cause__, FileNotFoundError)
    xattrs.fail = errno.EOPNOTSUPP
    with pytest.raises(SetupError) as ei:
        L.set_file_label(str(tmp_path), LBL)
    assert str(ei.value).endswith("operation not supported")
    with pytest.raises(ConfigError):
        L.set_file_label(str(tmp_path), "a:b:c\0d")


# ---- process labels -------------------------------------------------------------

def test_set_exec_label_to_fake_attr(fake, tmp_path):
    attr = tmp_path / "exec"
    fake.exec_attr = str(attr)
    L.set_exec_label("u:r:container_t:s0:c1,c2")
    assert attr.read_text() == "u:r:container_t:s0:c1,c2"
    L.set_process_label("u:r:other_t:s0")
    assert attr.read_text() == "u:r:other_t:s0"
    assert L.set_process_label is L.set_exec_label


def test_set_exec_label_with_early_fd(fake, tmp_path):
    attr = tmp_path / "exec"
    fake.exec_attr = str(attr)
    fd = L.open_exec_attr()
    try:
        fake.exec_attr = None
        L.set_exec_label("u:r:t:s0", fd=fd)
    finally:
        os.close(fd)
    assert attr.read_text() == "u:r:t:s0"


def test_set_exec_label_noops(fake, tmp_path):
    attr = tmp_path / "exec"
    fake.exec_attr = str(attr)
    L.set_exec_label("")
    assert not attr.exists()
    fake.fsdir = ""
    L.set_exec_label("u:r:t:s0")
    assert L.open_exec_attr() is None
    assert not attr.exists()


def test_exec_attr_untouched_when_off(off, tmp_path):
    # Off, nothing is opened: neither the stand-in's file nor the real attribute.
    L.kernel().exec_attr = str(tmp_path / "exec")
    L.set_exec_label("u:r:t:s0")
    assert L.open_exec_attr() is None and L.open_exec_attr_for_child() is None
    assert not (tmp_path / "exec").exists()


def test_the_shipped_kernel_reads_no_environment(monkeypatch):
    # The stand-in is installed by code (label.use), never by the environment:
    # an environment variable could turn a real SELinux host's labels off.
    monkeypatch.setattr(os, "environ", {"KETCH_SELINUXFS": ""})
    k = L.Kernel()
    with open("/proc/filesystems") as f:
        assert bool(k.selinuxfs()) == ("selinuxfs" in f.read() and L.usable("/sys/fs/selinux"))
    assert k.mount_context() and k.open_exec_attr_for_child() is None


def test_set_exec_label_bad_label(fake, tmp_path):
    fake.exec_attr = str(tmp_path / "exec")
    with pytest.raises(ConfigError):
        L.set_exec_label('u:r:t"')


def test_exec_attr_open_error(fake, tmp_path):
    fake.exec_attr = str(tmp_path / "no" / "exec")
    with pytest.raises(SetupError) as ei:
        L.set_exec_label("u:r:t:s0")
    assert str(ei.value) == f"open {tmp_path / 'no' / 'exec'}: no such file or directory"


def test_fstatfs_magic(tmp_path):
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    try:
        assert L._fstatfs_type(fd) == L.PROC_SUPER_MAGIC
    finally:
        os.close(fd)
    fd = os.open(str(tmp_path), os.O_RDONLY)
    try:
        assert L._fstatfs_type(fd) != L.PROC_SUPER_MAGIC
    finally:
        os.close(fd)


def test_exec_attr_must_be_procfs(fakefs, monkeypatch):
    # CVE-2019-16884: a container can mount over /proc; never trust a non-procfs attr file.
    monkeypatch.setattr(L, "_fstatfs_type", lambda fd: 0xEF53)
    with pytest.raises(SecurityError) as ei:
        L.open_exec_attr()
    assert "/proc/thread-self/attr/exec is not on procfs" in str(ei.value)


# ---- z / Z ----------------------------------------------------------------------

@pytest.mark.parametrize("opt,shared", [("z", True), ("Z", False)])
def test_validate_and_is_shared(opt, shared):
    L.validate(opt)
    assert L.is_shared(opt) is shared


@pytest.mark.parametrize("opt", ["", "zZ", "Zz", "x", "rw", "z,ro", " z", None, "shared"])
def test_validate_rejects(opt):
    with pytest.raises(ConfigError) as ei:
        L.validate(opt)
    assert "want z (shared) or Z (private)" in str(ei.value)
    with pytest.raises(ConfigError):
        L.is_shared(opt)


# ---- relabel --------------------------------------------------------------------

def make_tree(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "f").write_text("1")
    (root / "a" / "g").write_text("2")
    (root / "a" / "b" / "h").write_text("3")
    (root / "a" / "link").symlink_to("/etc/passwd")
    return [root, root / "f", root / "a", root / "a" / "g", root / "a" / "b", root / "a" / "b" / "h",
            root / "a" / "link"]


@pytest.mark.parametrize("shared,expected", [(False, LBL), (True, "system_u:object_r:container_file_t:s0")])
def test_relabel_tree(fakefs, xattrs, tmp_path, shared, expected):
    entries = make_tree(tmp_path / "vol")
    L.relabel(str(tmp_path / "vol"), LBL, shared)
    for e in entries:
        assert xattrs.raw(e) == expected.encode() + b"\0", e
    # Symlinks get their own label; what they point at is untouched.
    assert xattrs.raw("/etc/passwd", follow=True) is None
    assert all(follow is False for _, _, _, follow in xattrs.calls)


def test_relabel_single_file_and_relative_path(fakefs, xattrs, tmp_path, monkeypatch):
    (tmp_path / "one").write_text("x")
    monkeypatch.chdir(tmp_path)
    L.relabel("one", LBL, False)
    assert xattrs.raw(tmp_path / "one") == LBL.encode() + b"\0"
    assert len(xattrs.calls) == 1


def test_relabel_symlinked_top_labels_target(fakefs, xattrs, tmp_path):
    entries = make_tree(tmp_path / "vol")
    (tmp_path / "alias").symlink_to("vol")
    L.relabel(str(tmp_path / "alias"), LBL, False)
    assert all(xattrs.raw(e) == LBL.encode() + b"\0" for e in entries)
    assert xattrs.raw(tmp_path / "alias") is None


def test_reservation_file_errors(fakefs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SetupError) as ei:
        mcs.init_labels([], str(blocker))
    assert str(ei.value) == f"reserve SELinux MCS level: {blocker}/selinux: not a directory"


def test_relabel_shared_non_mls_label(fakefs, xattrs, tmp_path):
    L.relabel(str(tmp_path), "u:object_r:t", True)
    assert xattrs.raw(tmp_path) == b"u:object_r:t\0"


def test_relabel_noops(fake, xattrs, tmp_path):
    make_tree(tmp_path / "vol")
    L.relabel(str(tmp_path / "vol"), "", False)
    fake.fsdir = ""
    L.relabel(str(tmp_path / "vol"), LBL, True)
    L.relabel("/", LBL, True)  # off: quiet, as Docker's label package
    assert xattrs.calls == []


def test_relabel_missing_path(fakefs, xattrs, tmp_path):
    with pytest.raises(SetupError) as ei:
        L.relabel(str(tmp_path / "missing"), LBL, False)
    assert str(tmp_path / "missing") in str(ei.value)


def test_relabel_error_names_file(fakefs, xattrs, tmp_path):
    make_tree(tmp_path / "vol")
    xattrs.fail = errno.EOPNOTSUPP
    with pytest.raises(SetupError) as ei:
        L.relabel(str(tmp_path / "vol"), LBL, False)
    assert str(ei.value) == f"set SELinux label {LBL} on {tmp_path / 'vol'}: operation not supported"


@pytest.mark.parametrize("path", [
    "/", "/bin", "/boot", "/dev", "/etc", "/etc/", "/etc/passwd", "/etc/shadow", "/home", "/lib", "/lib64",
    "/media", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
    "//etc", "/usr/../etc", "/./usr/", "/var/run", "/usr/lib", "/var/lib", "///", "/tmp/..",
])
def test_relabel_refuses_system_locations(fakefs, xattrs, path):
    with pytest.raises(SecurityError) as ei:
        L.relabel(path, LBL, True)
    msg = str(ei.value)
    assert msg.startswith(f"relabel {path}") and "not allowed" in msg
    assert xattrs.calls == []


def test_relabel_refuses_symlink_to_system_location(fakefs, xattrs, tmp_path):
    (tmp_path / "sneaky").symlink_to("/etc")
    with pytest.raises(SecurityError) as ei:
        L.relabel(str(tmp_path / "sneaky"), LBL, False)
    assert str(ei.value) == f"relabel {tmp_path / 'sneaky'} (/etc): SELinux relabeling of a system location is not allowed"
    assert xattrs.calls == []


def test_relabel_refuses_home_dirs(fakefs, xattrs, tmp_path, monkeypatch):
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(SecurityError):
        L.relabel(str(home) + "/", LBL, False)
    import pwd
    root_home = pwd.getpwuid(0).pw_dir
    with pytest.raises(SecurityError):
        L.check_relabel_path(root_home)
    # Below a home directory is fine.
    (home / "data").mkdir()
    L.relabel(str(home / "data"), LBL, False)
    assert xattrs.raw(home / "data") == LBL.encode() + b"\0"


def test_check_relabel_path_bad_input():
    with pytest.raises(ConfigError):
        L.check_relabel_path("")
    L.check_relabel_path("/srv/volumes/x")


def test_import_is_cheap():
    import subprocess
    import sys
    code = ("import sys; import ketch.linux.label; "
            "print(' '.join(m for m in ('re', 'subprocess', 'logging', 'dataclasses', 'fcntl', 'ctypes', 'pwd') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {L.__file__.rsplit('/ketch/', 1)[0]!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
