"""Checkpoints by name or URL: the four released AnchorDETR models, or any http(s) address, downloaded
once into a cache folder and reused.

The cache folder is ``cache.cache_home()`` (``$ANCHORDETR_CACHE`` if set, else
``torch.hub.get_dir()/checkpoints/anchordetr``); a ``download_dir`` argument overrides it. A download
goes to a temporary file in that folder, is checked by the caller's reader, and only then renamed to
its final name: an interrupted, truncated or wrong download leaves nothing behind. http(s) links use
``torch.hub.download_url_to_file``; the released models are on Google Drive, which needs ``gdown``
(``pip install 'anchordetr_trt[download]'``).
"""

import hashlib
import os
import urllib.error
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .cache import CACHE_ENV, cache_home, write_whole
from .errors import CheckpointError, InputError, first_line

# The "model" links of the official README (github.com/megvii-research/AnchorDETR).
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "r50-c5": "https://drive.google.com/file/d/1ktLJyw4PGdaXkOn61W537Z67WHcttXDs/view?usp=sharing",
    "r50-dc5": "https://drive.google.com/file/d/1lJZWdIlHj6KKmAdU28Y01tTyO0hc6Jxs/view?usp=sharing",
    "r101-c5": "https://drive.google.com/file/d/1eBLYzlKWwSF_RRcfjgRXqIplRKetsvtg/view?usp=sharing",
    "r101-dc5": "https://drive.google.com/file/d/1irmZPSALME4Nht3_qhM9WLExDyO9Sj-J/view?usp=sharing",
}

T = TypeVar("T")


def is_remote(ckpt: object) -> bool:
    """True for a released model's name ("R50-DC5", any case) or an http(s) URL."""
    return isinstance(ckpt, str) and (
        ckpt.lower() in OFFICIAL_CHECKPOINTS or ckpt.lower().startswith(("http://", "https://"))
    )


def cache_dir(download_dir: str | os.PathLike | None = None) -> Path:
    """Where downloaded checkpoints are kept: ``download_dir``, else ``cache_home()``."""
    return Path(download_dir).expanduser() if download_dir is not None else cache_home()


def cached_path(source: str, download_dir: str | os.PathLike | None = None) -> Path:
    """The file that holds ``source`` (a released model's name or a URL) once downloaded."""
    name = source.lower()
    if name in OFFICIAL_CHECKPOINTS:
        return cache_dir(download_dir) / f"anchordetr_{name}.pth"
    # The URL's hash keeps two files of the same name from different places apart.
    basename = Path(urllib.parse.urlparse(source).path).name or "checkpoint.pth"
    return cache_dir(download_dir) / f"{hashlib.sha256(source.encode()).hexdigest()[:8]}-{basename}"


def fetch(
    source: str,
    read: Callable[[Path], T],
    *,
    download_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> T:
    """``read(path)`` of the cached file for ``source``, downloading it first if it is not cached.

    A new download is kept only if ``read`` accepts it; ``read`` raises for a file it cannot use.
    """
    path = cached_path(source, download_dir)
    if path.is_file():
        return read(path)
    if path.exists():
        raise InputError(
            f"the download cache path {path} exists but is not a file: move it away or set {CACHE_ENV}"
        )
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        why = error.strerror or first_line(error)
        if download_dir is not None:
            raise InputError(
                f"download_dir={str(download_dir)!r} cannot be created ({why}): pass a writable folder",
                argument="download_dir",
            ) from None
        origin = f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the default download folder"
        raise InputError(
            f"{origin} {folder} cannot be created ({why}): set {CACHE_ENV} to a writable folder"
        ) from None

    def download_and_read(partial: Path) -> T:
        _download(source, partial, progress)
        _refuse_html(partial, source)
        try:
            return read(partial)
        except CheckpointError as error:
            raise CheckpointError(
                f"the file downloaded from {_url(source)} is not a usable checkpoint ({first_line(error)}); "
                "nothing was kept: try again, or download it by hand and pass its path"
            ) from None

    return write_whole(path, download_and_read)  # kept only if read accepts it


def _url(source: str) -> str:
    return OFFICIAL_CHECKPOINTS.get(source.lower(), source)


def _download(source: str, dest: Path, progress: bool) -> None:
    url = _url(source)
    if urllib.parse.urlparse(url).hostname in ("drive.google.com", "docs.google.com"):
        _download_google_drive(url, dest, progress)
        return
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=progress)
    except urllib.error.HTTPError as error:
        raise CheckpointError(
            f"downloading {url} failed: HTTP {error.code} {error.reason}; check the address, or download "
            "the file by hand and pass its path"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise CheckpointError(
            f"downloading {url} failed ({reason}); check the network, or download the file by hand and pass "
            "its path"
        ) from None


def _download_google_drive(url: str, dest: Path, progress: bool) -> None:
    try:
        import gdown
    except ImportError:
        raise CheckpointError(
            f"{url} is on Google Drive, which needs the gdown package: pip install gdown "
            "(or 'anchordetr_trt[download]'), or download the file in a browser and pass its path"
        ) from None
    try:
        done = gdown.download(url, str(dest), quiet=not progress, fuzzy=True)
    except Exception as error:  # gdown raises its own types (quota, permission, network)
        done, reason = None, first_line(error)
    else:
        reason = "gdown returned no file"
    if not done:
        raise CheckpointError(
            f"downloading {url} from Google Drive failed ({reason}); Drive limits downloads of popular "
            "files: try later, or download the file in a browser and pass its path"
        )


def looks_like_html(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a web page (what a link serves instead of a file when
    it asks for a login, a quota or a virus-scan click) rather than binary data."""
    return head.lstrip()[:1] == b"<"


def _refuse_html(path: Path, source: str) -> None:
    with open(path, "rb") as f:
        head = f.read(512)
    if looks_like_html(head):
        raise CheckpointError(
            f"{_url(source)} served a web page, not a checkpoint (a login, quota or virus-scan page?); "
            "nothing was kept: open the link in a browser, download the file and pass its path"
        )
