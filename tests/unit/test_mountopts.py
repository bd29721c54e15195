from ketch.linux import mountopts as mo
from ketch.linux.mountopts import MS, parse_options


def test_flags_and_data_split():
    o = parse_options(["nosuid", "strictatime", "mode=755", "size=65536k"])
    assert o.flags == MS.NOSUID | MS.STRICTATIME
    assert o.data_string == "mode=755,size=65536k"
    assert o.propagation == [] and o.extensions == set()


def test_clearing_options_undo_earlier_ones():
    o = parse_options(["ro", "nosuid", "rw", "suid", "noexec"])
    assert o.flags == MS.NOEXEC
    assert o.clear & MS.RDONLY and o.clear & MS.NOSUID


def test_rbind_is_bind_and_rec():
    assert parse_options(["rbind"]).flags == MS.BIND | MS.REC


def test_propagation_kept_in_order():
    o = parse_options(["rprivate", "shared", "runbindable"])
    assert o.propagation == [MS.PRIVATE | MS.REC, MS.SHARED, MS.UNBINDABLE | MS.REC]
    assert o.flags == 0


def test_recursive_attributes():
    o = parse_options(["rro", "rnosuid", "rnoatime"])
    assert o.attr_set == mo.ATTR_RDONLY | mo.ATTR_NOSUID | mo.ATTR_NOATIME
    assert o.attr_clr & mo.ATTR__ATIME
    o = parse_options(["rro", "rrw"])
    assert o.attr_set == 0 and o.attr_clr == mo.ATTR_RDONLY


def test_extensions():
    assert parse_options(["tmpcopyup", "idmap"]).extensions == {"tmpcopyup", "idmap"}


def test_flag_names_for_messages():
    assert mo.flag_names(MS.RDONLY | MS.NOSUID | MS.BIND) == "ro,nosuid,bind"
    assert mo.flag_names(0) == ""
