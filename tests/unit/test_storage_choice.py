"""The storage driver a new store gets: the first of overlay, fuse-overlayfs, vfs whose
probe says it works (the probes themselves are exercised by the integration tests)."""

from ketch.engine import storage


def test_priority_is_kernel_overlay_then_fuse_overlayfs_then_vfs(monkeypatch, tmp_path):
    assert storage.PRIORITY == ("overlay", "fuse-overlayfs", "vfs")
    asked = []

    def fake_class(works):
        def driver_class(name):
            class D:
                @classmethod
                def supported(cls, home):
                    asked.append(name)
                    return name in works
            return D
        return driver_class

    for works, want in ((("overlay", "fuse-overlayfs", "vfs"), "overlay"),
                        (("fuse-overlayfs", "vfs"), "fuse-overlayfs"),
                        (("vfs",), "vfs"), ((), "vfs")):
        asked.clear()
        monkeypatch.setattr(storage, "driver_class", fake_class(works))
        assert storage.default_name(str(tmp_path)) == want
        assert asked == list(storage.PRIORITY[:storage.PRIORITY.index(want) + 1]) or not works
