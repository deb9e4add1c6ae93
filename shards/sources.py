"""List and read the input files of a shard build: a folder tree or a zip archive.

Every input file becomes an `Entry` with a path relative to the input. A folder is walked
recursively and follows directory symlinks once (a directory reached again through a symlink is
reported as a symlink loop). Entries are sorted by the bytes of their relative path, so the order
does not depend on the locale or the file system's listing order.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shards.errors import SkippedInput


@dataclass(frozen=True)
class Entry:
    """One input file: its path relative to the input, with '/' separators.

    `relpath` is a str; on POSIX, undecodable bytes of a file name are kept as surrogate escapes
    (`os.fsdecode`), so `os.fsencode(relpath)` returns the original bytes.
    `problem` is set when the listing already showed that the entry cannot be read, for example
    a symlink loop or a FIFO. The scan then skips the entry with that reason.
    """

    relpath: str
    problem: SkippedInput | None = None


def escape_path(relpath: str) -> str:
    """Return `relpath` as printable text: undecodable bytes become `\\xNN` escapes."""
    return os.fsencode(relpath).decode("utf-8", errors="backslashreplace")


def sort_key(relpath: str) -> bytes:
    """Return the byte string that orders entries, independent of locale."""
    return os.fsencode(relpath)


class FolderSource:
    """Input files under a folder, found recursively."""

    kind = "folder"

    def __init__(self, root: Path, exclude: Path | None = None):
        self.root = Path(root)
        self.exclude = Path(os.path.realpath(exclude)) if exclude is not None else None

    def list_entries(self) -> list[Entry]:
        """Return every file under the root, sorted by `sort_key`."""
        entries = list(self._walk(self.root, "", {os.path.realpath(self.root)}))
        entries.sort(key=lambda entry: sort_key(entry.relpath))
        return entries

    def _walk(self, folder: Path, prefix: str, visited: set[str]) -> Iterator[Entry]:
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda child: os.fsencode(child.name))
        except OSError as exc:
            if not prefix:
                raise ValueError(f"cannot list --input folder {folder}: {exc.strerror}; check its permissions") from exc
            yield Entry(prefix.rstrip("/"), problem=SkippedInput(
                "unreadable", f"unreadable folder: {exc.strerror} (errno {exc.errno}); its files were not listed"))
            return
        for child in children:
            relpath = prefix + child.name
            try:
                is_dir = child.is_dir(follow_symlinks=True)
            except OSError as exc:
                yield Entry(relpath, problem=stat_problem(exc))
                continue
            if not is_dir:
                yield Entry(relpath, problem=self._file_problem(child))
                continue
            real = os.path.realpath(child.path)
            if self.exclude is not None and Path(real) == self.exclude:
                continue
            if real in visited:
                yield Entry(relpath, problem=SkippedInput(
                    "symlink_loop", f"symlink loop: directory {relpath} leads back to a folder already walked"))
                continue
            yield from self._walk(Path(child.path), relpath + "/", visited | {real})

    @staticmethod
    def _file_problem(child: os.DirEntry) -> SkippedInput | None:
        try:
            mode = os.stat(child.path).st_mode
        except OSError as exc:
            return stat_problem(exc)
        if not stat.S_ISREG(mode):
            return SkippedInput("not_regular_file", f"not a regular file ({file_type_name(mode)})")
        return None

    def read_bytes(self, relpath: str, max_bytes: int) -> bytes:
        """Read one file whole, raising SkippedInput when it cannot be read or is too large."""
        path = self.root / relpath
        try:
            with open(path, "rb") as handle:
                # Only the upper limit is checked before reading: files in /proc report size 0.
                if os.fstat(handle.fileno()).st_size > max_bytes:
                    check_file_size(os.fstat(handle.fileno()).st_size, max_bytes)
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise stat_problem(exc) from exc
        check_file_size(len(data), max_bytes)
        return data

    def close(self) -> None:
        """Release nothing: a folder source holds no open handles."""


class ZipSource:
    """Input files inside a zip archive; directories inside the archive are not entries."""

    kind = "zip"

    def __init__(self, archive: Path):
        self.archive = Path(archive)
        self._zip: zipfile.ZipFile | None = None
        self._first_info_by_name: dict[str, zipfile.ZipInfo] = {}

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.archive)
            # zipfile's getinfo returns the last member of a repeated name; the build reads the first.
            for info in reversed(self._zip.infolist()):
                self._first_info_by_name[info.filename] = info
        return self._zip

    def list_entries(self) -> list[Entry]:
        """Return every file member, sorted by `sort_key`.

        A member whose name repeats an earlier member's name is listed with a `duplicate_name`
        problem right after the first one, which is the only one read.
        """
        infos = self._open().infolist()
        entries = []
        first_position_by_name: dict[str, int] = {}
        for position, info in enumerate(infos, start=1):
            if info.is_dir():
                continue
            first_position = first_position_by_name.setdefault(info.filename, position)
            if first_position == position:
                entries.append(Entry(info.filename))
                continue
            entries.append(Entry(info.filename, problem=SkippedInput(
                "duplicate_name", f"zip member {position} of {len(infos)} has the same name as member "
                                  f"{first_position}; only the first member of a name is read")))
        # The sort is stable, so the first member of a repeated name stays ahead of the later ones.
        entries.sort(key=lambda entry: sort_key(entry.relpath))
        return entries

    def read_bytes(self, relpath: str, max_bytes: int) -> bytes:
        """Read one member whole, raising SkippedInput when it cannot be read or is too large."""
        archive = self._open()
        try:
            info = self._first_info_by_name[relpath]
            check_file_size(info.file_size, max_bytes)
            with archive.open(info) as handle:
                data = handle.read(max_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
            raise SkippedInput("unreadable", f"unreadable zip member: {exc}") from exc
        check_file_size(len(data), max_bytes)
        return data

    def close(self) -> None:
        """Close the archive if it was opened."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            self._first_info_by_name = {}


def open_source(input_path: Path, exclude: Path | None = None) -> FolderSource | ZipSource:
    """Return the source for a folder or a zip archive, raising ValueError for anything else."""
    input_path = Path(input_path)
    if input_path.is_dir():
        return FolderSource(input_path, exclude=exclude)
    if input_path.is_file() and zipfile.is_zipfile(input_path):
        return ZipSource(input_path)
    if not input_path.exists():
        raise ValueError(f"--input {input_path} does not exist; pass an image folder or a zip archive")
    raise ValueError(f"--input {input_path} is neither a folder nor a zip archive; pass an image folder or a .zip")


def check_file_size(size_bytes: int, max_bytes: int) -> None:
    """Raise SkippedInput for an empty file or one larger than `max_bytes`."""
    if size_bytes == 0:
        raise SkippedInput("empty_file", "empty file (0 bytes)")
    if size_bytes > max_bytes:
        raise SkippedInput(
            "file_too_large", f"file too large: {size_bytes} bytes > --max-file-mb limit of {max_bytes} bytes")


def stat_problem(exc: OSError) -> SkippedInput:
    """Map an OSError raised while opening or reading a file to a skip reason."""
    if exc.errno == errno.ELOOP:
        return SkippedInput("symlink_loop", f"symlink loop: {exc.strerror}")
    if exc.errno == errno.ENOENT:
        return SkippedInput("not_found", f"not found (broken symlink or removed during the build): {exc.strerror}")
    return SkippedInput("unreadable", f"unreadable: {exc.strerror or exc} (errno {exc.errno})")


def file_type_name(mode: int) -> str:
    """Return a readable name for a non-regular file type."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):o}"
