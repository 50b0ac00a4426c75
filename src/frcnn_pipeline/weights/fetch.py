"""Fetch weights files: detectron2:// and http(s) URLs into a cache, or a local path.

urllib (stdlib) rather than a download library: what is needed is streaming with resume (HTTP Range),
retries with backoff, an atomic rename and a checksum, which are a few lines here.
"""

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from frcnn_pipeline.console.detail import DETAIL
from frcnn_pipeline.console.progress import Progress
from frcnn_pipeline.errors import UserFacingError

logger = logging.getLogger(__name__)

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"
_CHUNK = 1 << 20
MIB = 1 << 20
# 4xx answers that will not change on a retry (408 timeout and 429 rate limit are worth retrying).
_RETRYABLE_CLIENT_ERRORS = {408, 429}


class WeightsFetchError(UserFacingError, RuntimeError):
    """A weights file could not be fetched or verified."""


def resolve_source(source: str) -> str:
    """`detectron2://X` -> detectron2's public URL for X; other sources are returned unchanged."""
    if source.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_BASE_URL + source[len(DETECTRON2_PREFIX) :]
    return source


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in {"http", "https"}


def cache_path(url: str, cache_dir: str | Path) -> Path:
    """Where `url` is cached: `<cache_dir>/<host>/<path>`, so same-named files from two sites do not clash."""
    parts = urllib.parse.urlsplit(url)
    segments = [s for s in parts.path.split("/") if s not in {"", ".", ".."}]
    if not segments:
        raise WeightsFetchError(f"{url}: the URL names no file")
    host = parts.netloc.replace(":", "_")
    return Path(cache_dir, host, *segments)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, url: str) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        path.unlink()
        raise WeightsFetchError(
            f"{url}: sha256 mismatch (expected {expected}, got {actual}); the download was deleted. "
            "Check weights.sha256, or the URL if the file changed upstream."
        )


def _download_once(url: str, partial: Path, timeout_s: float, progress: bool) -> None:
    """One request, appending to `partial` from where it stopped (HTTP Range)."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "frcnn_pipeline"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # nothing left past `offset`: the partial file is stale; start again
            partial.unlink()
        raise
    with response:
        if offset and response.status != 206:  # the server ignored the Range header
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        with (
            open(partial, "ab" if offset else "wb") as stream,
            Progress(
                partial.name.removesuffix(".part"),
                total and total / MIB,
                "MiB",
                offset / MIB,
                enabled=progress,
            ) as bar,
        ):
            while chunk := response.read(_CHUNK):
                stream.write(chunk)
                received += len(chunk)
                bar.update(len(chunk) / MIB)
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def _describe(error: Exception | None, timeout_s: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    cause = getattr(error, "reason", error)  # URLError wraps the socket error
    return f"timed out after {timeout_s}s" if isinstance(cause, TimeoutError) else str(cause)


def fetch_url(
    url: str,
    cache_dir: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download `url` into the cache (once) and return the file's path.

    A failed attempt is retried `retries` times with exponential backoff and resumes where it stopped.
    The file appears under its final name only when complete and, if `sha256` is given, verified;
    on a checksum mismatch nothing is kept.

    Raises:
        WeightsFetchError: HTTP errors such as 404 (not retried), exhausted retries (e.g. offline: the
            message says where to put the file by hand), or a checksum mismatch.
    """
    target = cache_path(url, cache_dir)
    if target.exists():
        if sha256 is None or sha256_of(target) == sha256.lower():
            logger.info("Using cached %s for %s", target, url, extra=DETAIL)
            return target
        logger.warning("Cached %s does not match weights.sha256; downloading it again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "Download of %s failed (%s); retry %d/%d in %.1fs", url, last_error, attempt, retries, delay
            )
            time.sleep(delay)
        try:
            _download_once(url, partial, timeout_s, progress)
            break
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500 and error.code not in _RETRYABLE_CLIENT_ERRORS:
                raise WeightsFetchError(
                    f"{url}: HTTP {error.code} {error.reason}; check weights.source"
                ) from error
            last_error = error
        except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets, short reads
            last_error = error
    else:
        reason = _describe(last_error, timeout_s)
        raise WeightsFetchError(
            f"Could not download {url} after {retries + 1} attempts: {reason}. If this machine is offline, "
            f"download the file elsewhere and put it at {target} (it is then used as is), or set "
            "weights.source to a local path."
        ) from last_error
    _check_sha256(partial, sha256, url)
    os.replace(partial, target)  # atomic: the final name only ever holds a complete file
    logger.info("Downloaded %s to %s", url, target)
    return target


def fetch_weights(source: str, cache_dir: str | Path, *, sha256: str | None = None, **download: Any) -> Path:
    """Resolve `source` (detectron2://, http(s) URL or local path) to a local, verified file.

    `download` takes `fetch_url`'s options (retries, backoff_s, timeout_s, progress) for URLs.
    """
    url = resolve_source(source)
    if is_url(url):
        return fetch_url(url, cache_dir, sha256=sha256, **download)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsFetchError(
            f"weights.source {source!r} is neither a URL nor an existing file; give a detectron2:// or "
            "http(s) URL, a local path, or `none` for random initialisation"
        )
    if sha256 is not None and sha256_of(path) != sha256.lower():
        raise WeightsFetchError(f"{path}: sha256 mismatch (expected {sha256}); the file was left in place")
    return path
