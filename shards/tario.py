"""Write tar shards and JSON files so that the same content always gives the same bytes.

Tar members get fixed metadata (mtime 0, uid/gid 0, empty owner names, mode 0644) in the ustar
format, which stores no timestamps or PAX records. Files are written under a temporary name in
the same folder and renamed into place, so a reader never sees a half-written file under its
final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

MEMBER_MODE = 0o644
HASH_CHUNK_BYTES = 1 << 20


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts every byte it passes to the wrapped file."""

    def __init__(self, handle):
        super().__init__()
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.num_bytes

    def write(self, data) -> int:
        self.sha256.update(data)
        self.num_bytes += len(data)
        return self.handle.write(data)


class ShardTarWriter:
    """Append samples to one tar file with fixed member metadata."""

    def __init__(self, handle):
        self.counter = HashingWriter(handle)
        self.tar = tarfile.open(fileobj=self.counter, mode="w", format=tarfile.USTAR_FORMAT)

    def add_member(self, name: str, data: bytes) -> None:
        """Write one regular file member."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = MEMBER_MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> tuple[int, str]:
        """Finish the archive and return (size in bytes, sha256 hex digest)."""
        self.tar.close()
        return self.counter.num_bytes, self.counter.sha256.hexdigest()


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value) -> bytes:
    """Return `value` as JSON bytes with sorted keys and a fixed layout."""
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    temp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp_path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp_path, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so a rename inside it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
