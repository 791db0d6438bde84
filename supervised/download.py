"""Checksummed, resumable downloads of dataset files (standard library only).

A file is fetched into ``<name>.part`` with an HTTP ``Range`` request that continues where an earlier,
interrupted attempt stopped; the complete file is then verified against its published MD5 and only
then renamed to its final name, so a file with the final name is always complete and verified.
Mirrors are tried in order. Nothing here runs unless the user asks for a download (``--download``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ChecksumError", "download_file", "file_md5", "verify_md5"]

_CHUNK = 1 << 20
_USER_AGENT = "plasticrl-dataset-fetch/1"


class ChecksumError(ValueError):
    """A dataset file's MD5 differs from the published one (corrupt or a different version)."""


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)  # integrity against the published checksums only
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` naming the file when its MD5 is not ``expected``."""
    actual = file_md5(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: MD5 {actual} does not match the published {expected}; the file is corrupt or a "
            "different version. Delete it and run again with --download to fetch it anew."
        )


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request from its current size)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # requested range not satisfiable: the .part is already whole
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        # 206: the server continues from ``offset``; 200: it ignored the Range header, start over.
        mode = "ab" if offset and status == 206 else "wb"
        with open(part, mode) as f:
            shutil.copyfileobj(response, f, _CHUNK)


def download_file(
    urls: Sequence[str], destination: str | os.PathLike, md5: str, *, timeout: float = 60.0
) -> Path:
    """Download ``destination`` from the first working mirror in ``urls``, resuming a ``.part`` file.

    The result is verified against ``md5`` before it gets its final name. A ``.part`` that fails the
    check is deleted and fetched once more from scratch. Raises :class:`ChecksumError` or the last
    network error (with every mirror tried) when no mirror gives a verified file.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    errors: list[str] = []
    for url in urls:
        for attempt in range(2):
            try:
                _fetch(url, part, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                errors.append(f"{url}: {error}")
                break  # keep the .part; the next mirror continues it
            try:
                verify_md5(part, md5)
            except ChecksumError as error:
                part.unlink(missing_ok=True)
                errors.append(f"{url}: {error}")
                if attempt == 0:
                    continue  # a stale or foreign .part: fetch once more from scratch
                break
            os.replace(part, destination)
            return destination
    raise OSError(f"could not download {destination.name}; tried:\n  " + "\n  ".join(errors))
