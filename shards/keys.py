"""Derive webdataset sample keys from input paths.

A key is the relative path without its last extension, with folder separators turned into "-"
and every character outside [A-Za-z0-9_-] turned into "_" (accented letters are first folded to
ASCII, so "café.png" gives "cafe"). Examples: "00000/00001.png" -> "00000-00001",
"celeba_hq/006930.jpg" -> "celeba_hq-006930", "img.v2.png" -> "img_v2".
Keys never contain a dot (webdataset splits a member name at its first dot) and never start with
two underscores (webdataset skips such members as metadata).

When two paths give the same key, the first in sorted order keeps it and each later one gets
"-" plus the first 8 hex digits of the SHA-1 of its relative path. Keys longer than
MAX_KEY_CHARS are cut and get the same suffix, which keeps tar member names within the
100-byte limit of the ustar format.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from typing import Iterable

MAX_KEY_CHARS = 90
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def stem_key(relpath: str) -> str:
    """Return the sanitized path without its last extension, at any length.

    This is the key of a short path before collisions are resolved, and what the split of a file
    is drawn from (`shards.plan.split_for_path`).
    """
    folders, _, filename = relpath.rpartition("/")
    stem = filename.rsplit(".", 1)[0] if "." in filename[1:] else filename
    parts = [part for part in folders.split("/") if part] + [stem]
    key = "-".join(_sanitize(part) for part in parts)
    return re.sub(r"^_+", "_", key) or "_"


def natural_key(relpath: str) -> str:
    """Return the readable key of one relative path, before collisions are resolved."""
    key = stem_key(relpath)
    if len(key) > MAX_KEY_CHARS:
        key = key[: MAX_KEY_CHARS - 9] + "-" + path_digest(relpath)
    return key


def assign_keys(relpaths: Iterable[str]) -> list[str]:
    """Return one unique key per path, in the given order (callers pass sorted paths)."""
    used: set[str] = set()
    keys = []
    for relpath in relpaths:
        key = natural_key(relpath)
        if key in used:
            key = f"{key[: MAX_KEY_CHARS - 9]}-{path_digest(relpath)}"
        base, counter = key, 1
        while key in used:
            counter += 1
            key = f"{base}-{counter}"
        used.add(key)
        keys.append(key)
    return keys


def path_digest(relpath: str) -> str:
    """Return 8 hex digits of the SHA-1 of the path's bytes."""
    return hashlib.sha1(os.fsencode(relpath)).hexdigest()[:8]


def _sanitize(part: str) -> str:
    raw = os.fsencode(part).decode("utf-8", errors="replace")
    base_letters = "".join(c for c in unicodedata.normalize("NFKD", raw) if not unicodedata.combining(c))
    ascii_text = base_letters.encode("ascii", errors="replace").decode("ascii")
    return _INVALID_CHARS.sub("_", ascii_text)
