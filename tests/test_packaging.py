"""The package as a user installs it: a real wheel, installed (not editable) into a fresh venv, run from
another folder. The presets must come with it (they live in the top-level configs/ of the source)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rvm_live import __version__
from rvm_live.config import CHECKOUT_CONFIG_DIR

pytestmark = pytest.mark.slow  # builds a wheel and a venv

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted(p.stem for p in CHECKOUT_CONFIG_DIR.glob("*.toml"))


def _source_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them (git's tracked and not-ignored ones), so the build leaves
    nothing in the checkout and cannot pick up a stale build/ folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source, offline, with the build tools already installed."""
    work = tmp_path_factory.mktemp("wheel")
    src = _source_copy(work / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(work / "dist"), str(src)], check=True, capture_output=True)
    (built,) = (work / "dist").glob("rvm_live-*.whl")
    return built


def _site_dirs() -> list[str]:
    """The folders this interpreter installs packages into (a venv's and, if it sees them, the system's)."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a new venv that sees this interpreter's packages (torch is not downloaded
    again); pip checks every declared dependency is there, without an index. Returns the venv's bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    # No pip or setuptools of its own (they would shadow the newer setuptools torch asks for). A .pth, not
    # --system-site-packages: when the tests run in a venv, that would mean the base Python's, not this one's.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bin_dir = venv / "bin"
    site = subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer-site.pth").write_text("\n".join(_site_dirs()) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q",
                           "--no-index", "--disable-pip-version-check", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return bin_dir


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing into the checkout; cached weights only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "RVM_LIVE_OFFLINE": "1"}


def test_wheel_carries_the_presets_and_version(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(Path(n).stem for n in names if n.startswith("rvm_live/configs/")) == PRESETS
    assert wheel.name.startswith(f"rvm_live-{__version__}-")


def test_installed_wheel_runs_a_preset_from_another_folder(installed, tmp_path, official_onnx_path, carphone_path):
    where = subprocess.run([str(installed / "python"), "-c", "import rvm_live; print(rvm_live.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=_user_env(), check=True).stdout
    assert str(installed.parent) in where  # the wheel's copy, not the checkout

    proc = subprocess.run([str(installed / "rvm-live"), "--config", "default", "--max-frames", "5", "-o", "null"],
                          capture_output=True, text=True, cwd=tmp_path, env=_user_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "frames in 5, out 5" in proc.stderr


def test_installed_help_lists_the_presets_and_version(installed, tmp_path):
    help_text = subprocess.run([str(installed / "rvm-live"), "--help"], capture_output=True, text=True,
                               cwd=tmp_path, env=_user_env(), check=True).stdout
    shipped = " ".join(help_text.split()).split("shipped: ", 1)[1]
    assert all(name in shipped for name in PRESETS), help_text
    version = subprocess.run([str(installed / "rvm-live"), "--version"], capture_output=True, text=True,
                             cwd=tmp_path, env=_user_env(), check=True).stdout
    assert version.strip() == f"rvm-live {__version__}"
