"""Reading a small file someone else may have put there (a variants file, a run record) without
hanging or filling memory: a FIFO blocks `open`, /dev/zero never ends, a 2 GB file is not a record.
Light: the standard library only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from runner.core.errors import SpecError


class NotRegularFile(Exception):
    """The path is no regular file: `kind` says what it is ("a FIFO", "a symbolic link", ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class TooLarge(Exception):
    """The file holds more than the limit."""


def kind_of(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((word for test, word in kinds if test(mode)), "a regular file" if stat.S_ISREG(mode) else "no file")


def read_regular(path: Path, limit: int, follow_links: bool = True) -> bytes:
    """At most `limit` bytes of a regular file. Raises NotRegularFile (a FIFO, a device, a folder; a
    symbolic link too when `follow_links` is false), TooLarge, or the OSError of reading it."""
    info = os.stat(path) if follow_links else os.lstat(path)
    if not stat.S_ISREG(info.st_mode):  # checked before opening: opening a FIFO or a socket may block or fail
        raise NotRegularFile(kind_of(info.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    with os.fdopen(os.open(path, flags), "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):  # swapped since the check
            raise NotRegularFile(kind_of(mode))
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise TooLarge(f"over {limit / 2**20:.0f} MiB")
    return raw


def read_user_file(path: Path, limit: int, what: str, fix: str) -> bytes:
    """A file the user named (`what`, e.g. "variants file"), or one line saying why not and `fix`."""
    try:
        return read_regular(path, limit)
    except NotRegularFile as exc:
        raise SpecError([f"{path}: {exc.kind}, not a file; {fix}"]) from None
    except TooLarge:
        raise SpecError([f"{path}: over {limit / 2**20:.0f} MiB, too large for a {what}; {fix}"]) from None
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the {what} ({exc.strerror or exc}); {fix}"]) from None
