"""Layer tars: a safe extractor and a writer.

Debian's Python 3.11.2 tarfile has no extraction filters and ``extractall``
follows a symlink planted by an earlier entry out of the destination; the
filters of later releases strip setuid bits and refuse absolute symlinks that
images need.  So layers are extracted here, entry by entry:

* names are relative: an absolute name (``/etc/x``) or any ``..`` component
  is refused, not rewritten.  Image tools (docker, buildkit, podman, umoci)
  never write either; a tar that does is either broken or hostile, and
  guessing what it meant is how extractors get tricked.
* every parent is resolved *beneath* the layer root (openat2
  ``RESOLVE_BENEATH``): a parent symlink that stays inside the layer is
  followed, one that leaves it (absolute target, ``..`` climbing out) is
  refused.  Tools that write layers record real paths, never paths through
  symlinks.  Without openat2 the walk is done component by component with
  ``O_NOFOLLOW`` and any symlinked parent is refused.
* files are created with ``O_NOFOLLOW|O_EXCL`` relative to the resolved
  parent fd; an existing entry is removed first (a later entry wins, as in
  tar), except a directory over a directory, which is kept.
* hardlink targets obey the same rules as names; symlink *contents* are
  stored as they are (an absolute target is fine: it resolves inside the
  container's root at run time).
* whiteouts (``.wh.NAME``) and opaque directories (``.wh..wh..opq``) are
  applied by hand and only to what lower layers left (OCI image spec: an
  entry of the same layer is never hidden by its own whiteout).  For the
  overlay driver they become what overlayfs understands instead: a 0:0
  character device and the ``trusted.overlay.opaque`` xattr.
* setuid/setgid/sticky bits, owners (shifted by the uid/gid maps), xattrs
  (PAX ``SCHILY.xattr.*`` and libarchive's ``LIBARCHIVE.xattr.*``), device
  numbers and times are kept.  ``trusted.overlay.*``, ``user.overlay.*`` and
  ``user.fuseoverlayfs.*`` xattrs from an archive are dropped: they would let a
  layer forge overlayfs metadata (a rootless overlay mount reads
  ``user.overlay.*``, "userxattr"; fuse-overlayfs reads all three).
"""

import errno
import os
import stat

from ketch.errors import ImageError, StorageError, describe_oserror
from ketch.engine import idmap

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
_O_DIR = os.O_DIRECTORY | os.O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0o10000000)
_CHUNK = 1 << 17
_ZEROS = bytes(_CHUNK)

# ---- compression -----------------------------------------------------------------

GZIP, ZSTD, BZIP2, XZ, NONE = "gzip", "zstd", "bzip2", "xz", ""


def sniff(head):
    """Compression of a stream from its first bytes."""
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ZSTD
    if head[:3] == b"BZh":
        return BZIP2
    if head[:6] == b"\xfd7zXZ\x00":
        return XZ
    return NONE


class _ZstdReader:
    """zstd through the `zstd` program: Python 3.11's stdlib has no zstd codec."""

    def __init__(self, raw):
        import shutil
        import subprocess
        exe = shutil.which("zstd")
        if exe is None:
            raise ImageError("layer is zstd-compressed and the zstd program is not installed (apt-get install zstd)")
        from ketch.linux import eagain
        self.proc = eagain.retry(subprocess.Popen, [exe, "-dcq"], stdin=raw, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)

    def read(self, n=-1):
        return self.proc.stdout.read(n)

    def close(self):
        self.proc.stdout.close()
        err = self.proc.stderr.read().decode(errors="replace").strip()
        self.proc.stderr.close()
        if self.proc.wait() != 0:
            raise ImageError(f"zstd: {err or 'decompression failed'}")


def open_decompressed(raw):
    """A reader of `raw`'s uncompressed bytes (gzip, zstd, bzip2, xz or none).

    `raw` must be a real file (zstd reads its fd) positioned at the start.
    """
    head = os.pread(raw.fileno(), 8, raw.tell())
    kind = sniff(head)
    if kind == GZIP:
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == ZSTD:
        return _ZstdReader(raw)
    if kind == BZIP2:
        import bz2
        return bz2.BZ2File(raw)
    if kind == XZ:
        import lzma
        return lzma.LZMAFile(raw)
    return raw


class HashReader:
    """Reads through to `inner`, hashing (sha256) and counting every byte."""

    def __init__(self, inner):
        import hashlib
        self.inner = inner
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, n=-1):
        b = self.inner.read(n)
        self.h.update(b)
        self.n += len(b)
        return b

    def drain(self):
        while self.read(1 << 20):
            pass
        return "sha256:" + self.h.hexdigest()


def decode_errors(e):
    import gzip
    import lzma
    import tarfile
    import zlib
    return isinstance(e, (tarfile.TarError, zlib.error, EOFError, lzma.LZMAError, gzip.BadGzipFile))


# ---- extraction ------------------------------------------------------------------

def split_name(name, what="layer entry"):
    if name.startswith("/"):
        raise ImageError(f"{what} {name!r}: absolute path refused: it would land outside the layer")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ImageError(f"{what} {name!r}: '..' component refused: it would climb out of the layer")
    return parts


OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")


def _xattrs_of(member):
    out = {}
    for k, v in member.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            out[k[13:]] = v.encode("utf-8", "surrogateescape")
        elif k.startswith("LIBARCHIVE.xattr."):
            import base64
            import urllib.parse
            pad = "=" * (-len(v) % 4)
            out[urllib.parse.unquote(k[17:])] = base64.b64decode(v + pad)
    return {k: v for k, v in out.items() if not k.startswith(OVERLAY_XATTRS)}


class _Extractor:
    def __init__(self, dest, uid_map=None, gid_map=None, overlay=False, use_openat2=True,
                 opaque_xattr="trusted.overlay.opaque"):
        self.root = os.open(dest, os.O_RDONLY | _O_DIR)
        self.opaque_xattr = opaque_xattr
        self.uid_map, self.gid_map = uid_map, gid_map
        self.overlay = overlay
        self.openat2 = use_openat2
        self.chown = os.geteuid() == 0 or bool(uid_map or gid_map)
        self.root_ids = idmap.root_pair(uid_map, gid_map)
        self.cache = {}
        self.created = set()
        self.dirs = {}
        self.size = 0

    def close(self):
        self._flush()
        os.close(self.root)

    def _flush(self):
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()

    # -- resolution beneath the root --

    def _open_beneath(self, parts, flags):
        path = "/".join(parts)
        if self.openat2:
            from ketch.linux import libc as _libc
            try:
                return _libc.openat2(self.root, path, flags | os.O_CLOEXEC, 0,
                                     _libc.RESOLVE_BENEATH | _libc.RESOLVE_NO_MAGICLINKS)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise
                self.openat2 = False
        fd = os.dup(self.root)
        try:
            for p in parts:
                nfd = os.open(p, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError:
            os.close(fd)
            raise
        return fd

    def parent(self, parts, name, create=True):
        fd = self.cache.get(parts)
        if fd is not None:
            return fd
        if not parts:
            return self.root
        try:
            fd = self._open_beneath(parts, _O_PATH | os.O_DIRECTORY)
        except OSError as e:
            if e.errno == errno.ENOENT and create:
                up = self.parent(parts[:-1], name)
                try:
                    os.mkdir(parts[-1], 0o755, dir_fd=up)
                except FileExistsError:
                    raise ImageError(f"layer entry {name!r}: parent {'/'.join(parts)!r} is a dangling symlink") from None
                if self.chown:
                    os.chown(parts[-1], *self.root_ids, dir_fd=up, follow_symlinks=False)
                self.created.add(parts)
                return self.parent(parts, name, create)
            if e.errno == errno.EXDEV:
                raise ImageError(f"layer entry {name!r}: parent {'/'.join(parts)!r} is a symlink leading "
                                 "out of the layer") from None
            if e.errno in (errno.ENOTDIR, errno.ELOOP) and not self.openat2:
                raise ImageError(f"layer entry {name!r}: parent {'/'.join(parts)!r} is not a directory "
                                 "(symlinked parents need openat2)") from None
            if e.errno == errno.ENOTDIR:
                raise ImageError(f"layer entry {name!r}: parent {'/'.join(parts)!r} is not a directory") from None
            if e.errno == errno.ELOOP:
                raise ImageError(f"layer entry {name!r}: parent {'/'.join(parts)!r}: too many symlinks") from None
            if e.errno == errno.ENOENT:
                return None
            raise
        self.cache[parts] = fd
        return fd

    # -- removal --

    def _remove(self, pfd, base):
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return
        try:
            if stat.S_ISDIR(st.st_mode):
                import shutil
                shutil.rmtree(base, dir_fd=pfd)
            else:
                os.unlink(base, dir_fd=pfd)
        finally:
            self._flush()  # cached fds may point under what went away; callers re-resolve

    # -- entries --

    def entry(self, tar, m):
        name = m.name
        parts = split_name(name)
        if not parts:
            if m.isdir():
                self.dirs[()] = m
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(parts, name)
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.ischr() or m.isblk() or m.isfifo()):
            raise ImageError(f"layer entry {name!r}: unsupported tar entry type {m.type!r}")
        pfd = self.parent(parts[:-1], name)
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            st = None
        if st is not None and not (m.isdir() and stat.S_ISDIR(st.st_mode)):
            self._remove(pfd, base)
            pfd = self.parent(parts[:-1], name)
        self.created.add(parts)
        if m.isdir():
            if st is None or not stat.S_ISDIR(st.st_mode):
                os.mkdir(base, 0o700, dir_fd=pfd)
            self.dirs[parts] = m
        elif m.isreg():
            self._file(tar, m, pfd, base)
        elif m.islnk():
            self._hardlink(m, pfd, base)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._attrs(m, pfd, base, symlink=True)
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            dev = os.makedev(m.devmajor, m.devminor) if kind != stat.S_IFIFO else 0
            os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
            self._attrs(m, pfd, base)

    def _ids(self, m):
        return (idmap.to_host(m.uid, self.uid_map, "uid"), idmap.to_host(m.gid, self.gid_map, "gid"))

    def _times(self, m):
        mt = int(m.mtime * 1e9)
        at = m.pax_headers.get("atime")
        return (int(float(at) * 1e9) if at else mt, mt)

    def _file(self, tar, m, pfd, base):
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(m)
            left = m.size
            while left > 0:
                chunk = src.read(min(left, _CHUNK))
                if not chunk:
                    raise ImageError(f"layer entry {m.name!r}: archive truncated")
                n = len(chunk)
                if n == _CHUNK and chunk == _ZEROS:
                    os.lseek(fd, n, os.SEEK_CUR)  # keep holes as holes
                else:
                    os.write(fd, chunk)
                left -= n
            os.ftruncate(fd, m.size)
            self.size += m.size
            if self.chown:
                os.chown(fd, *self._ids(m))
            os.chmod(fd, m.mode & 0o7777)
            for k, v in _xattrs_of(m).items():
                os.setxattr(fd, k, v)
            os.utime(fd, ns=self._times(m))
        finally:
            os.close(fd)

    def _attrs(self, m, pfd, base, symlink=False):
        if self.chown:
            os.chown(base, *self._ids(m), dir_fd=pfd, follow_symlinks=False)
        if not symlink:
            os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
        xa = _xattrs_of(m)
        if xa:
            path = f"/proc/self/fd/{pfd}/{base}"
            for k, v in xa.items():
                os.setxattr(path, k, v, follow_symlinks=False)
        os.utime(base, ns=self._times(m), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, m, pfd, base):
        target = split_name(m.linkname, f"layer entry {m.name!r}: hardlink target")
        if not target:
            raise ImageError(f"layer entry {m.name!r}: hardlink to the layer root")
        tfd = self.parent(target[:-1], m.name, create=False)
        try:
            if tfd is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory")
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(f"layer entry {m.name!r}: hardlink target {m.linkname!r} is not in the layer") from None

    def _whiteout(self, parts, name):
        base = parts[-1]
        if base == OPAQUE:
            pfd = self.parent(parts[:-1], name)
            if self.overlay:
                os.setxattr(f"/proc/self/fd/{pfd}", self.opaque_xattr, b"y")
                return
            dfd = self._open_beneath(parts[:-1], os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = [e.name for e in os.scandir(dfd)]
            finally:
                os.close(dfd)
            for n in names:
                if parts[:-1] + (n,) not in self.created:
                    self._remove(pfd, n)
                    pfd = self.parent(parts[:-1], name)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing for us
        victim = base[len(WHITEOUT_PREFIX):]
        if victim in ("", ".", ".."):
            raise ImageError(f"layer entry {name!r}: malformed whiteout")
        if parts[:-1] + (victim,) in self.created:
            return
        if self.overlay:
            pfd = self.parent(parts[:-1], name)
            self._remove(pfd, victim)
            pfd = self.parent(parts[:-1], name)
            os.mknod(victim, stat.S_IFCHR | 0o000, 0, dir_fd=pfd)
            return
        pfd = self.parent(parts[:-1], name, create=False)
        if pfd is not None:
            self._remove(pfd, victim)

    def finish_dirs(self):
        for parts, m in reversed(list(self.dirs.items())):
            try:
                fd = self._open_beneath(parts, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW) if parts \
                    else os.dup(self.root)
            except OSError:
                continue  # replaced or removed by a later entry
            try:
                if self.chown:
                    os.chown(fd, *self._ids(m))
                os.chmod(fd, m.mode & 0o7777)
                for k, v in _xattrs_of(m).items():
                    os.setxattr(fd, k, v)
                os.utime(fd, ns=self._times(m))
            except OSError as e:
                raise ImageError(f"layer entry {m.name!r}: {describe_oserror(e)}") from None
            finally:
                os.close(fd)


def extract(stream, dest, *, uid_map=None, gid_map=None, overlay=False, progress=None, use_openat2=True,
            opaque_xattr="trusted.overlay.opaque"):
    """Apply the uncompressed layer tar read from `stream` onto directory `dest`.

    Returns the number of bytes of regular-file content written.  Raises
    ImageError naming the offending entry; `dest` is then partially written
    (callers extract into a fresh layer and remove it on failure).
    """
    import tarfile
    ex = _Extractor(dest, uid_map, gid_map, overlay, use_openat2, opaque_xattr)
    name = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", format=tarfile.PAX_FORMAT)
        for m in tar:
            name = m.name
            ex.entry(tar, m)
            if progress and m.size:
                progress(m.size)
        ex.finish_dirs()
        return ex.size
    except ImageError:
        raise
    except StorageError as e:  # an owner the id maps do not cover
        raise ImageError(f"layer entry {name!r}: {e}") from None
    except OSError as e:
        where = f"layer entry {name!r}" if name is not None else "layer"
        raise ImageError(f"{where}: {describe_oserror(e)}") from e
    except Exception as e:
        if decode_errors(e):
            where = f" after entry {name!r}" if name is not None else ""
            raise ImageError(f"corrupt or truncated layer archive{where}: {e}") from e
        raise
    finally:
        ex.close()


# ---- writing -------------------------------------------------------------------------

class Tree:
    """A directory tree someone else may be changing (a container's layer), read through fds.

    Every parent directory is opened beneath the root with no symlink on the
    way (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, else an O_NOFOLLOW walk)
    and entries are reached relative to it, never followed: a directory
    swapped for a symlink to the host mid-walk fails the lookup, it does not
    pull host files in.
    """

    def __init__(self, root):
        self.root = os.fspath(root)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._cached = ("", None)

    def close(self):
        if self._cached[1] is not None:
            os.close(self._cached[1])
        self._cached = ("", None)
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def dir(self, rel):
        """An fd of directory `rel` (owned by the tree: valid until the next call)."""
        if not rel:
            return self.fd
        if self._cached[0] == rel and self._cached[1] is not None:
            return self._cached[1]
        fd = self._open(rel, _O_PATH | os.O_DIRECTORY)
        if self._cached[1] is not None:
            os.close(self._cached[1])
        self._cached = (rel, fd)
        return fd

    def _open(self, rel, flags):
        from ketch.linux import libc as _libc
        global _TREE_OPENAT2
        if _TREE_OPENAT2:
            try:
                return _libc.openat2(self.fd, rel, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0,
                                     _libc.RESOLVE_BENEATH | _libc.RESOLVE_NO_SYMLINKS | _libc.RESOLVE_NO_MAGICLINKS)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise OSError(e.errno, e.strerror, os.path.join(self.root, rel)) from None
                _TREE_OPENAT2 = False
        fd = os.dup(self.fd)
        try:
            for p in rel.split("/"):
                nfd = os.open(p, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def at(self, rel):
        """(parent dir fd, name) of entry `rel`."""
        d, _, name = rel.rpartition("/")
        return self.dir(d), name

    def lstat(self, rel):
        pfd, name = self.at(rel)
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)

    def lexists(self, rel):
        try:
            self.lstat(rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EXDEV):
                return False  # a symlink on the way: the entry is not in this tree
            raise
        return True

    def readlink(self, rel):
        pfd, name = self.at(rel)
        return os.readlink(name, dir_fd=pfd)

    def _xpath(self, rel):
        pfd, name = self.at(rel)
        return f"/proc/self/fd/{pfd}/{name}" if name else f"/proc/self/fd/{pfd}"

    def xattrs(self, rel):
        """{name: value} of entry `rel` (not followed); {} where the filesystem has none."""
        path = self._xpath(rel)
        try:
            return {k: os.getxattr(path, k, follow_symlinks=False)
                    for k in os.listxattr(path, follow_symlinks=False)}
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise

    def getxattr(self, rel, key):
        try:
            return os.getxattr(self._xpath(rel), key, follow_symlinks=False)
        except OSError:
            return None

    def open_file(self, rel, st):
        """A read fd of regular file `rel`, which must still be the inode `st` describes."""
        pfd, name = self.at(rel)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(name, flags | os.O_NOATIME, dir_fd=pfd)
        except PermissionError:
            fd = os.open(name, flags, dir_fd=pfd)
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise OSError(errno.ESTALE, "changed while it was read", os.path.join(self.root, rel))
        return fd

    def walk(self):
        """(relative path, stat) of every entry under the root: depth first, sorted by name.
        Each directory is opened O_NOFOLLOW relative to its parent's fd."""
        stack = [(self.fd, self._names(self.fd), "")]
        try:
            while stack:
                fd, entries, base = stack[-1]
                if not entries:
                    stack.pop()
                    if fd != self.fd:
                        os.close(fd)
                    continue
                name, st = entries.pop()
                rel = base + "/" + name if base else name
                yield rel, st
                if stat.S_ISDIR(st.st_mode):
                    dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                    stack.append((dfd, self._names(dfd), rel))
        finally:
            for fd, _, _ in stack:
                if fd != self.fd:
                    os.close(fd)

    def names(self, rel):
        """[(name, stat)] of directory `rel`."""
        if not rel:
            return self._names(self.fd)
        fd = self._open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._names(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _names(fd):
        """[(name, stat)] of directory fd `fd`, reverse-sorted (popped from the end)."""
        with os.scandir(fd) as it:
            return sorted(((e.name, e.stat(follow_symlinks=False)) for e in it), reverse=True)


_TREE_OPENAT2 = True


class _Sink:
    """Where a TarWriter writes; dropped, it takes nothing more."""

    def __init__(self, out):
        self.out = out

    def write(self, data):
        return len(data) if self.out is None else self.out.write(data)


class TarWriter:
    """A PAX tar of the entries of a Tree, with owners shifted back to container ids.

    As a context manager: closed (the end-of-archive blocks written) when the
    block ends normally; when it raises, abandoned: nothing more is written,
    so a half-made tar never ends as if whole, and tarfile does not try to
    finish it later on a file its reader has closed ("write to closed file"
    at garbage collection)."""

    def __init__(self, out, uid_map=None, gid_map=None):
        import tarfile
        self.tarfile = tarfile
        self.sink = _Sink(out)
        self.tar = tarfile.open(fileobj=self.sink, mode="w|", format=tarfile.PAX_FORMAT)
        self.uid_map, self.gid_map = uid_map, gid_map
        self.inodes = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abandon()
        else:
            self.close()

    def abandon(self):
        self.sink.out = None
        self.tar.close()

    def add(self, tree, rel, st=None):
        tf = self.tarfile
        st = st or tree.lstat(rel)
        mode = st.st_mode
        ti = tf.TarInfo(rel)
        ti.mode = stat.S_IMODE(mode)
        ti.uid = idmap.to_container(st.st_uid, self.uid_map, "uid")
        ti.gid = idmap.to_container(st.st_gid, self.gid_map, "gid")
        ti.uname = ti.gname = ""
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                          for k, v in tree.xattrs(rel).items() if not k.startswith(OVERLAY_XATTRS)}
        data = None
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            first = self.inodes.get((st.st_dev, st.st_ino))
            if first is not None:
                ti.type, ti.linkname = tf.LNKTYPE, first
                self.tar.addfile(ti)
                return
            self.inodes[(st.st_dev, st.st_ino)] = rel
        if stat.S_ISREG(mode):
            ti.type, ti.size = tf.REGTYPE, st.st_size
            data = os.fdopen(tree.open_file(rel, st), "rb")
        elif stat.S_ISDIR(mode):
            ti.type = tf.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tf.SYMTYPE, tree.readlink(rel)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tf.CHRTYPE if stat.S_ISCHR(mode) else tf.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tf.FIFOTYPE
        else:
            return  # sockets have no tar form; they are recreated by their owners
        try:
            self.tar.addfile(ti, data)
        finally:
            if data is not None:
                data.close()

    def whiteout(self, arcname, mtime=0):
        d, _, base = arcname.rpartition("/")
        ti = self.tarfile.TarInfo((d + "/" if d else "") + WHITEOUT_PREFIX + base)
        ti.mtime, ti.mode = mtime, 0o644
        self.tar.addfile(ti)

    def opaque(self, dirname, mtime=0):
        ti = self.tarfile.TarInfo((dirname + "/" if dirname else "") + OPAQUE)
        ti.mtime, ti.mode = mtime, 0o644
        self.tar.addfile(ti)

    def close(self):
        self.tar.close()


def write_tree(root, out, *, uid_map=None, gid_map=None):
    """Tar every entry under `root` (not root itself) to `out`, sorted."""
    with TarWriter(out, uid_map, gid_map) as w, Tree(root) as tree:
        for rel, st in tree.walk():
            w.add(tree, rel, st)


class TarStream:
    """A readable stream of a tar produced by `produce(fileobj)` in a thread.

    close() waits for the producer and raises its error, so a caller that
    read to the end learns whether the tar is whole.
    """

    def __init__(self, produce):
        import threading
        r, w = os.pipe()
        self._r = os.fdopen(r, "rb")
        self._w = os.fdopen(w, "wb")
        self._err = None

        def run():
            try:
                produce(self._w)
            except BaseException as e:  # noqa: B902 - handed to the reader
                self._err = e
            finally:
                try:
                    self._w.close()
                except OSError:
                    pass

        self._t = threading.Thread(target=run, name="ketch-tar", daemon=True)
        self._t.start()

    def read(self, n=-1):
        return self._r.read(n)

    def readable(self):
        return True

    def close(self):
        self._r.close()  # a producer still writing gets EPIPE and stops
        self._t.join()
        if self._err is not None and not isinstance(self._err, BrokenPipeError):
            raise self._err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
