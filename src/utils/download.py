"""The one download routine (``http(s)://`` and ``file://``), for the model hub and dataset preparation.
``dest`` is written through ``dest + ".part"``, which a later call continues (an HTTP ``Range`` request;
``file://`` seeks, so tests run the same path offline) when its last bytes equal the source's there, else
restarts. Network errors and HTTP 5xx / 429 are retried. The checksum is computed while the bytes arrive, so
a 13 GB archive is not read twice; a file of the wrong size or checksum is moved to ``.bad`` (or deleted);
only a verified file is renamed to ``dest``."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from tqdm import tqdm

CHUNK_BYTES = 1 << 20
USER_AGENT = "csl-prepare/1.0 (+https://github.com/Alibaba-MIIL/PartialLabelingCSL reimplementation)"
HASHES = ("md5", "sha256")
OVERLAP_BYTES = 4096  # a .part's last bytes fetched again and compared before it is continued


class DownloadError(ValueError):
    """A download that failed or does not match the publisher's size or checksum."""


@dataclass
class DownloadResult:
    """``fetched_bytes`` came over the network, from ``resumed_from``; ``skipped``: ``dest`` was there."""

    path: str
    size: int
    fetched_bytes: int = 0
    resumed_from: int = 0
    skipped: bool = False


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """("md5", hex) from "md5:<hex>" (or sha256)."""
    if not checksum:
        return None
    algorithm, _, digest = checksum.partition(":")
    if algorithm not in HASHES or not re.fullmatch(r"[0-9a-fA-F]+", digest or ""):
        raise ValueError(f"checksum {checksum!r} must look like 'md5:<hex digits>' or 'sha256:<hex digits>'")
    return algorithm, digest.lower()


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def progress_bar(total: int | None, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A byte-counting tqdm bar on stderr; every 30 s when stderr is a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, file=sys.stderr, mininterval=0.5 if interactive else 30.0,
                dynamic_ncols=interactive)


def hash_file(path: str, algorithm: str, *, progress: bool = False, desc: str | None = None):
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle, progress_bar(os.path.getsize(path), desc or f"{algorithm} "
                                                  f"{os.path.basename(path)}", progress) as bar:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            hasher.update(block)
            bar.update(len(block))
    return hasher


@dataclass
class _Fetch:
    """One attempt: ``stream`` of the bytes from ``offset`` (None: nothing left to read); ``restarted``: why
    the ``.part`` cannot be continued (the stream starts at 0)."""

    stream: object
    offset: int
    total: int | None
    restarted: str = ""


def _open_file_url(url: str, offset: int) -> _Fetch:
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    if not os.path.isfile(path):
        raise DownloadError(f"{url}: no such file ({path}); fix the URL")
    total = os.path.getsize(path)
    restarted = "the .part is longer than the source" if offset > total else ""
    handle = open(path, "rb")  # closed by _copy
    handle.seek(0 if restarted else offset)
    return _Fetch(handle, 0 if restarted else offset, total, restarted)


def _content_range_total(header: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", header or "")
    return int(match.group(1)) if match else None


def _open_http_url(url: str, offset: int, timeout: float) -> _Fetch:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after offset: the .part may already be complete
            total = _content_range_total(error.headers.get("Content-Range"))
            error.close()
            if total == offset:
                return _Fetch(None, offset, total)
            fetch = _open_http_url(url, 0, timeout)  # the .part is no prefix of this file: restart
            fetch.restarted = "the .part is longer than the source"
            return fetch
        if error.code >= 500 or error.code == 429:  # the server's trouble, often passing: retried
            raise ConnectionError(f"HTTP {error.code} ({error.reason})") from error
        raise DownloadError(f"{url}: the server answered HTTP {error.code} ({error.reason}); check the URL "
                            "or try again later") from error
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            response.close()
            raise DownloadError(f"{url}: the server sent bytes {response.headers.get('Content-Range')!r} "
                                f"for a request from byte {offset}; delete the .part file and try again")
        total = _content_range_total(response.headers.get("Content-Range"))
        if total is None and length is not None:
            total = offset + int(length)
        return _Fetch(response, offset, total)
    # 200: the whole file (a server without range support restarts a resumed download)
    return _Fetch(response, 0, int(length) if length is not None else None,
                  "the server ignores Range requests" if offset else "")


def _open(url: str, offset: int, timeout: float) -> _Fetch:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme == "file":
        return _open_file_url(url, offset)
    if scheme in ("http", "https"):
        return _open_http_url(url, offset, timeout)
    raise DownloadError(f"{url}: unsupported URL scheme {scheme!r}; use http://, https:// or file://")


def _resume(url: str, part: str, offset: int, timeout: float) -> _Fetch:
    """The source from ``offset``, fetched from up to ``OVERLAP_BYTES`` earlier: a ``.part`` whose last bytes
    differ from the source's (junk, or another file) is not continued but restarted."""
    overlap = min(offset // 2, OVERLAP_BYTES)
    fetch = _open(url, offset - overlap, timeout)
    if not overlap or fetch.restarted or fetch.stream is None:
        return fetch
    with open(part, "rb") as handle:
        handle.seek(offset - overlap)
        tail = handle.read(overlap)
    if fetch.stream.read(overlap) == tail:
        fetch.offset = offset
        return fetch
    fetch.stream.close()
    fetch = _open(url, 0, timeout)
    fetch.restarted = "its last bytes differ from the source's"
    return fetch


def _source_size(url: str, timeout: float = 60.0) -> int | None:
    """The source's byte count (a file's size, an HTTP HEAD's Content-Length); None when it gives none."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() == "file":
        path = urllib.request.url2pathname(parsed.path)
        return os.path.getsize(path) if os.path.isfile(path) else None
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.headers["Content-Length"])
    except (OSError, urllib.error.URLError, http.client.HTTPException, TypeError, ValueError):
        return None


def _verify(path: str, size: int | None, checksum: str | None, *, name: str, progress: bool, hasher,
            bad: str | None) -> None:
    """A size or checksum mismatch moves ``path`` to ``bad`` (None: deletes it); ``hasher``: so far."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        why = f"has {actual} bytes, expected {size} (the publisher's size)"
    else:
        expected = parse_checksum(checksum)
        if expected is None:
            return
        algorithm, digest = expected
        hasher = hasher or hash_file(path, algorithm, progress=progress, desc=f"checking {name}")
        if hasher.hexdigest() == digest:
            return
        why = (f"checksum mismatch: {algorithm} {hasher.hexdigest()}, expected {digest}; the download is "
               "corrupt or the file changed upstream")
    if bad is None:
        os.remove(path)
        where = "The file was deleted; run the same command again to download it afresh"
    else:
        os.replace(path, bad)
        where = f"The file was moved to {bad}; delete it and run the same command again to download it afresh"
    raise DownloadError(f"{name}: {why}. {where}")


def download(url: str, dest: str, *, size: int | None = None, checksum: str | None = None,
             progress: bool = True, retries: int = 3, timeout: float = 60.0, retry_wait: float = 5.0,
             log=print, keep_bad: bool = True, hint: str = "", confirm_size: bool = False) -> DownloadResult:
    """``size``: the publisher's byte count; ``log`` gets the resume / retry notes; ``hint`` (the caller's
    flags or fix) ends every error message; ``confirm_size``: a ``dest`` already there, of no known size or
    checksum, is kept only if its size is the source's (when the source gives one), else continued."""
    try:
        return _download(url, dest, size, checksum, progress, retries, timeout, retry_wait, log, keep_bad,
                         confirm_size)
    except DownloadError as error:
        if not hint:
            raise
        raise DownloadError(f"{error}; {hint}") from error


def _download(url, dest, size, checksum, progress, retries, timeout, retry_wait, log, keep_bad, confirm_size):
    name = os.path.basename(dest)
    expected = parse_checksum(checksum)
    bad = dest + ".bad" if keep_bad else None
    part = dest + ".part"
    if os.path.isfile(dest) and confirm_size and size is None and expected is None:
        total, actual = _source_size(url, timeout), os.path.getsize(dest)
        if total is not None and total != actual:
            log(f"{name}: {dest} has {actual} bytes but the source {total} (an interrupted download); "
                "continuing it")
            os.replace(dest, part)
    if os.path.isfile(dest):
        _verify(dest, size, checksum, name=name, progress=progress, hasher=None, bad=bad)
        return DownloadResult(dest, os.path.getsize(dest), skipped=True)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    if size is not None and offset > size:  # longer than the file can be: not a prefix of it
        log(f"{name}: {part} is larger than the file ({offset} > {size} bytes); starting again")
        os.remove(part)
        offset = 0
    if offset:
        log(f"{name}: continuing the partial download at {human_bytes(offset)} ({part})")
    resumed_from, fetched, attempt = offset, 0, 0
    while True:
        attempt += 1
        # the hash of what the .part holds so far (a failed attempt may have written an unhashed block)
        hasher = None
        if expected is not None:
            hasher = hash_file(part, expected[0]) if offset else hashlib.new(expected[0])
        try:
            fetch = _resume(url, part, offset, timeout)
            if fetch.restarted:
                log(f"{name}: {part} cannot be continued ({fetch.restarted}); discarding it and starting "
                    "from the beginning")
                offset, resumed_from = 0, 0
                hasher = hashlib.new(expected[0]) if expected is not None else None
            if size is not None and fetch.total is not None and fetch.total != size:
                if fetch.stream is not None:
                    fetch.stream.close()
                raise DownloadError(f"{name}: {url} has {fetch.total} bytes but the publisher lists {size}; "
                                    "the file changed upstream or the URL is wrong")
            fetched += _copy(fetch, part, hasher, name, progress)
            offset = os.path.getsize(part)
            if fetch.total is not None and offset < fetch.total:
                raise ConnectionError(f"the connection closed at byte {offset} of {fetch.total}")
            break
        except DownloadError:
            raise
        except (OSError, urllib.error.URLError, http.client.HTTPException) as error:  # network: retry
            offset = os.path.getsize(part) if os.path.isfile(part) else 0
            if attempt > retries:
                kept = (f"The partial file {part} ({human_bytes(offset)}) is kept: run the same command "
                        "again to continue it" if offset else "Nothing was written")
                raise DownloadError(f"{name}: downloading {url} failed after {attempt} attempt(s) ({error}). "
                                    f"{kept}") from error
            log(f"{name}: {error}; retrying in {retry_wait:g} s (attempt {attempt + 1} of {retries + 1}, "
                f"continuing at {human_bytes(offset)})")
            time.sleep(retry_wait)
    try:
        _verify(part, fetch.total if size is None else size, checksum, name=name, progress=progress,
                hasher=hasher, bad=None if resumed_from else bad)
    except DownloadError as error:
        if not resumed_from:
            raise
        log(f"{name}: the continued {part} did not verify ({error}); downloading it anew")
        return _download(url, dest, size, checksum, progress, retries, timeout, retry_wait, log, keep_bad,
                         False)
    os.replace(part, dest)
    return DownloadResult(dest, os.path.getsize(dest), fetched_bytes=fetched, resumed_from=resumed_from)


def _copy(fetch: _Fetch, part: str, hasher, name: str, progress: bool) -> int:
    """Append the stream to ``part`` (truncated when the fetch starts at 0); returns bytes copied."""
    if fetch.stream is None:  # the server says the .part is already complete
        return 0
    copied = 0
    with fetch.stream as stream, open(part, "ab" if fetch.offset else "wb") as out, \
            progress_bar(fetch.total, name, progress, fetch.offset) as bar:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            out.write(block)
            if hasher is not None:
                hasher.update(block)
            copied += len(block)
            bar.update(len(block))
    return copied
