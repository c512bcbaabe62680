"""``files get FILE_ID [-o PATH]``: stream a stored file to disk, resume an interrupted
download (``Range`` + ``If-Range`` on the SHA-256 ETag), verify it (docs/cli.md)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from csvstore.cli.http import Api, CliFailure, ExitCode, path
from csvstore.cli.output import Output

CHUNK_SIZE = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True, slots=True)
class Fetched:
    path: str
    received: int  # bytes that came over the network this time
    resumed_from: int  # bytes that were already on disk and kept
    sha256: str
    verified: bool  # the digest matched the server's record (False only when it has none)

    def as_json(self, file: dict[str, Any]) -> dict[str, Any]:
        return {
            "file": file,
            "path": self.path,
            "bytes_received": self.received,
            "resumed_from": self.resumed_from,
            "sha256": self.sha256,
            "verified": self.verified,
        }


def destination(target: str | None, file: dict[str, Any]) -> Path:
    """``-o PATH`` as given, else the original name (its last component) in a folder."""
    name = Path(str(file.get("original_filename") or "")).name
    if name in ("", ".", ".."):
        name = f"{file['id']}.csv"
    if target is None:
        return Path(name)
    chosen = Path(target)
    return chosen / name if chosen.is_dir() else chosen


def _hash_prefix(file_path: Path, length: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with file_path.open("rb") as handle:
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest


def _existing_size(file_path: Path) -> int:
    return file_path.stat().st_size if file_path.is_file() else 0


def _open_at(file_path: Path, offset: int) -> IO[bytes]:
    """The file opened for writing at ``offset``, anything after it cut off."""
    if offset == 0:
        return file_path.open("wb")
    handle = file_path.open("r+b")
    handle.seek(offset)
    handle.truncate()
    return handle


def _write(handle: IO[bytes], digest: hashlib._Hash, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


async def _transfer(
    api: Api, file: dict[str, Any], dest: Path, out: Output, *, resume: bool
) -> Fetched:
    size = int(file["file_size"])
    expected: str | None = file.get("sha256")
    url = api.url(path("files", file["id"], "content"))

    have = await asyncio.to_thread(_existing_size, dest) if resume and expected else 0
    if have > size:
        have = 0  # not a prefix of this file, whatever it is
    digest = await asyncio.to_thread(_hash_prefix, dest, have) if have else hashlib.sha256()
    if have and have == size:
        if digest.hexdigest() == expected:
            return Fetched(str(dest), 0, have, digest.hexdigest(), verified=True)
        have, digest = 0, hashlib.sha256()

    # identity: the bytes on disk must be the stored bytes, never a proxy's compression
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = f'"{expected}"'
    received = 0
    async with api.request("GET", url, headers=headers) as response:
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != have:
                raise CliFailure(
                    ExitCode.UNAVAILABLE,
                    f"asked for bytes {have}- and got {response.headers.get('Content-Range')!r}",
                )
        else:  # the whole file: the server could not serve the range for this version
            have, digest = 0, hashlib.sha256()
        handle = await asyncio.to_thread(_open_at, dest, have)
        try:
            with out.progress() as progress:
                task = progress.add_task(dest.name, total=size, completed=have)
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    await asyncio.to_thread(_write, handle, digest, chunk)
                    received += len(chunk)
                    progress.advance(task, len(chunk))
        finally:
            await asyncio.to_thread(handle.close)

    actual = digest.hexdigest()
    if have + received != size:
        raise CliFailure(
            ExitCode.UNAVAILABLE,
            f"{dest}: received {have + received} bytes of {size}; run again to resume",
        )
    if expected is None:
        out.warn(f"the server recorded no sha256 for {file['id']}: {dest} is not verified")
        return Fetched(str(dest), received, have, actual, verified=False)
    if actual == expected:
        return Fetched(str(dest), received, have, actual, verified=True)
    if have:
        out.warn(f"{dest} was not a part of this file; downloading it again from the start")
        return await _transfer(api, file, dest, out, resume=False)
    await asyncio.to_thread(dest.unlink, missing_ok=True)
    raise CliFailure(
        ExitCode.INTEGRITY,
        f"{dest}: the bytes received have sha256 {actual}, the server recorded {expected}; "
        "the file was removed",
    )


async def _to_stdout(api: Api, file: dict[str, Any], out: Output) -> Fetched:
    """``-o -``: the bytes go to stdout as they come; verified at the end (exit 4 if not)."""
    url = api.url(path("files", file["id"], "content"))
    digest = hashlib.sha256()
    received = 0
    sink = sys.stdout.buffer
    async with api.request("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        async for chunk in response.content.iter_chunked(CHUNK_SIZE):
            await asyncio.to_thread(_write, sink, digest, chunk)
            received += len(chunk)
    await asyncio.to_thread(sink.flush)
    expected = file.get("sha256")
    if expected is not None and digest.hexdigest() != expected:
        raise CliFailure(
            ExitCode.INTEGRITY,
            f"the bytes written have sha256 {digest.hexdigest()}, the server recorded {expected}",
        )
    if expected is None:
        out.warn(f"the server recorded no sha256 for {file['id']}: the bytes are not verified")
    return Fetched("-", received, 0, digest.hexdigest(), verified=expected is not None)


def _is_this_file(file_path: Path, file: dict[str, Any]) -> bool:
    size = int(file["file_size"])
    expected = file.get("sha256")
    if not file_path.is_file() or file_path.stat().st_size != size or expected is None:
        return False
    return bool(_hash_prefix(file_path, size).hexdigest() == expected)


async def _refuse_to_clobber(dest: Path, file: dict[str, Any]) -> None:
    """A name csvstore chose (the original file name) that is taken by another file: refused,
    as nobody asked for that file to be replaced. (A PATH given with -o is taken for an
    interrupted download of this file and resumed.)"""
    if not await asyncio.to_thread(dest.exists):
        return
    if await asyncio.to_thread(_is_this_file, dest, file):
        return  # already downloaded: reported as complete, left as it is
    raise CliFailure(
        ExitCode.USAGE,
        f"{dest} already exists and is not this file: nothing was written. Use -o PATH for "
        f"another name, -o {dest} to resume an interrupted download into it, or --force to "
        "replace it",
    )


async def get_file(
    api: Api, file_id: str, target: str | None, out: Output, *, force: bool = False
) -> dict[str, Any]:
    """Download a file; the ``--json`` document describing what happened."""
    file = await api.call("GET", path("files", file_id))
    try:
        if target == "-":
            fetched = await _to_stdout(api, file, out)
        else:
            dest = destination(target, file)
            named = target is not None and dest == Path(target)
            if not named and not force:
                await _refuse_to_clobber(dest, file)
            fetched = await _transfer(api, file, dest, out, resume=True)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise CliFailure(ExitCode.USAGE, f"cannot write{where}: {exc.strerror or exc}") from None
    if fetched.path != "-":
        if fetched.resumed_from and fetched.received == 0:
            out.say(f"{fetched.path} is already complete ({fetched.resumed_from} bytes)")
        elif fetched.resumed_from:
            out.say(
                f"{fetched.path}: resumed at byte {fetched.resumed_from}, "
                f"{fetched.received} more received, sha256 verified"
            )
        else:
            verified = ", sha256 verified" if fetched.verified else ""
            out.say(f"{fetched.path}: {fetched.received} bytes{verified}")
    return fetched.as_json(file)
