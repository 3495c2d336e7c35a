"""HTTP downloads for the dataset acquirers: resumable, atomic, size- and checksum-checked.

`fetch(url, dest)` writes `dest` only when the whole file has arrived (and matches its expected
size and MD5 when given): bytes arrive in a hidden `.<name>.part` file beside it, which a later
call resumes with an HTTP Range request. Concurrent callers (several shards starting at once)
serialise on a lock file, so a file is downloaded once.

Every failure is a one-line `DownloadError` that says what could not be reached and how to
use a local copy instead (the caller's `hint`). Unreachable hosts (no network, DNS failure,
connection refused) fail at once; timeouts, dropped connections, HTTP 429 and 5xx are retried
with exponential backoff.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.core.errors import PipelineError

CHUNK = 1 << 20
USER_AGENT = "psla-pipeline/0.1 (+https://github.com/YuanGongND/psla)"
UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
RETRIED_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(PipelineError):
    """A download that did not succeed; the message is one line and says what to do."""


class _Transient(Exception):
    """Worth another try (the message says why)."""


def host_of(url: str) -> str:
    return urlsplit(url).netloc or url


def part_path(dest: str | Path) -> Path:
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.part")


def md5_file(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block; other processes wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _unreachable(err: BaseException) -> str | None:
    """The reason when `err` means the host cannot be reached at all (not worth retrying)."""
    plain_url_error = isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError)
    reason = err.reason if plain_url_error else err
    if isinstance(reason, socket.gaierror):
        return f"name resolution failed: {reason.strerror or reason}"
    if isinstance(reason, OSError) and reason.errno in UNREACHABLE_ERRNOS:
        return reason.strerror or str(reason)
    return None


def _describe(err: BaseException) -> str:
    reason = getattr(err, "reason", None) if isinstance(err, urllib.error.URLError) else None
    text = str(reason if reason is not None else err) or type(err).__name__
    return " ".join(text.split())


def _open(url: str, timeout: float, offset: int = 0):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _with_retries(action, url: str, *, retries: int, backoff: float, hint: str, what: str):
    """Run `action()`; retry `_Transient` failures; turn everything into a one-line DownloadError."""
    attempt = 0
    while True:
        try:
            return action()
        except urllib.error.HTTPError as err:
            if err.code not in RETRIED_HTTP:
                raise DownloadError(
                    f"HTTP {err.code} {err.reason} from {url} while downloading {what}; {hint}"
                ) from None
            problem = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException, _Transient) as err:
            unreachable = _unreachable(err)
            if unreachable:
                raise DownloadError(
                    f"cannot reach {host_of(url)} ({unreachable}) to download {what} from {url}; {hint}"
                ) from None
            problem = _describe(err)
        if attempt >= retries:
            tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
            raise DownloadError(f"downloading {what} from {url} failed after {tries} ({problem}); {hint}")
        time.sleep(backoff * 2**attempt)
        attempt += 1


def _complete(path: Path, size: int | None, md5: str | None) -> bool:
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    return md5 is None or md5_file(path) == md5.lower()


def fetch(
    url: str,
    dest: str | Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 2.0,
    hint: str = "",
    what: str | None = None,
    progress: bool = False,
) -> Path:
    """Download `url` to `dest` unless a complete copy is already there; returns `dest`."""
    dest = Path(dest)
    what = what or dest.name
    hint = hint or f"copy {dest.name} there by hand from a machine with network access ({dest})"
    if _complete(dest, size, md5) if (size or md5) else dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.with_name(f".{dest.name}.lock")):
        if _complete(dest, size, md5) if (size or md5) else dest.is_file():  # another process finished it
            return dest
        part = part_path(dest)
        checksum_failures = [0]

        def attempt():
            offset = part.stat().st_size if part.is_file() else 0
            if size is not None and offset > size:
                part.unlink()
                offset = 0
            if size is None or offset < size:
                try:
                    response = _open(url, timeout, offset)
                except urllib.error.HTTPError as err:
                    if err.code != 416 or not offset:  # 416: nothing left to send after `offset`
                        raise
                    response = None
                if response is not None:
                    with response:
                        mode = "ab" if offset and response.status == 206 else "wb"
                        _copy(response, part, mode, progress, what)
            got = part.stat().st_size
            if size is not None and got != size:
                if got > size:
                    part.unlink()
                raise _Transient(f"got {got} bytes, expected {size}")
            if md5 is not None:
                actual = md5_file(part)
                if actual != md5.lower():
                    part.unlink()
                    checksum_failures[0] += 1
                    if checksum_failures[0] >= 2:
                        raise DownloadError(
                            f"{what} from {url}: MD5 {actual} does not match the expected {md5} "
                            f"twice; the server's file differs from the release's record; {hint}"
                        )
                    raise _Transient(f"MD5 mismatch (got {actual}, expected {md5})")
            os.replace(part, dest)

        _with_retries(attempt, url, retries=retries, backoff=backoff, hint=hint, what=what)
    return dest


def _copy(response, part: Path, mode: str, progress: bool, what: str) -> None:
    total = response.headers.get("Content-Length")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=what, mininterval=2.0)
    try:
        with open(part, mode) as out:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()


def fetch_json(
    url: str, *, timeout: float = 60.0, retries: int = 3, backoff: float = 2.0, hint: str = "", what: str | None = None
):
    """A small JSON document, in memory."""
    what = what or url

    def attempt():
        with _open(url, timeout) as response:
            body = response.read()
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DownloadError(f"{url}: expected JSON for {what}, got something else; {hint}") from None

    return _with_retries(attempt, url, retries=retries, backoff=backoff, hint=hint, what=what)
