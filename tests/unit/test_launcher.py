"""scripts/ketch, the command `pip install .` installs (pyproject script-files):
it must start ketch with -I -S (no site processing: ~5 ms on every container
start) in the layout pip gives it, and still work, through site, anywhere else.

A real venv (no pip in it) stands for what pip installs: scripts/ketch in its
bin/ and ketch in its site-packages.  A .pth file there tells whether site ran."""

import os
import subprocess
import sys

import pytest

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
SRC = os.path.abspath(os.path.join(REPO, "src"))
LAUNCHER = os.path.abspath(os.path.join(REPO, "scripts", "ketch"))
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _venv(tmp_path):
    v = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(v)], check=True)
    site = v / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    if not site.is_dir():
        pytest.skip(f"{PY} is not python{sys.version_info[0]}.{sys.version_info[1]}")
    marker = tmp_path / "site-ran"
    (site / "zz-marker.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    (v / "bin" / "ketch").write_bytes(open(LAUNCHER, "rb").read())
    os.chmod(v / "bin" / "ketch", 0o755)
    return v, site, marker


def _version(v):
    out = subprocess.run([str(v / "bin" / "ketch"), "--version"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_installed_launcher_skips_site(tmp_path):
    v, site, marker = _venv(tmp_path)
    os.symlink(os.path.join(SRC, "ketch"), site / "ketch")
    assert "ketch version" in _version(v)
    assert not marker.exists(), "the launcher ran site (no -I -S)"


def test_launcher_falls_back_to_site_elsewhere(tmp_path):
    v, site, marker = _venv(tmp_path)
    (site / "ketch-src.pth").write_text(SRC + "\n")  # like an editable install
    assert "ketch version" in _version(v)
    assert marker.exists()
