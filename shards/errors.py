"""The exception that turns one input file into an entry of index.json `skipped`."""

from __future__ import annotations


class SkippedInput(Exception):
    """An input file that does not become a sample, with a short kind and a readable reason.

    `kind` is a fixed identifier used to count skips by cause (for example "truncated",
    "duplicate", "too_many_pixels"); `reason` is the sentence stored in index.json.
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SkippedInput) and (self.kind, self.reason) == (other.kind, other.reason)

    def __hash__(self) -> int:
        return hash((self.kind, self.reason))

    def __reduce__(self):
        return (SkippedInput, (self.kind, self.reason))
