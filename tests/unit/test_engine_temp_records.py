"""Records the engine writes atomically leave no temp file behind: a failed
rename removes it, and what a killed change left is swept by the next one
(issue 18: ENOSPC on the rename of a layer record during `container commit`
left `.<id>.json.tmp-<pid>` for `system check` to find)."""

import errno
import os

import pytest

from ketch.engine import util
from ketch.engine.content import ContentStore


def test_a_failed_rename_removes_the_temp_file(tmp_path, monkeypatch):
    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)

    monkeypatch.setattr(os, "rename", no_space)
    with pytest.raises(OSError) as e:
        util.atomic_write(str(tmp_path / "rec.json"), b"{}")
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_the_next_change_sweeps_record_temps_a_killed_one_left(tmp_path):
    store = ContentStore(str(tmp_path / "storage"), driver="vfs", progress=False)
    with store._locked():
        pass
    left = [os.path.join(store.dir, "layers", ".%s.json.tmp-123" % ("a" * 64)),
            os.path.join(store.dir, "db", ".%s.json.tmp-123" % ("b" * 64)),
            os.path.join(store.dir, ".repositories.json.tmp-123")]
    for p in left:
        with open(p, "w") as f:
            f.write("{")
    with store._locked():
        pass
    assert not [p for p in left if os.path.exists(p)]
    assert os.path.exists(os.path.join(store.dir, "lock"))
