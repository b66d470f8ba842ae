"""Moving the bytes of one open file to another: in-kernel when possible, sparse-aware, in bounded chunks."""

from __future__ import annotations

import errno
import itertools
import os
import re
import threading
import time
from collections.abc import Callable

# copy_file_range/sendfile refuse some file pairs (other filesystems, special files, old kernels): fall back.
UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}
_BUFFER = 1024 * 1024
_temp_counter = itertools.count()


def temp_name(dest: str) -> str:
    """The hidden name a file is written under before it is renamed to `dest` (same directory)."""
    head, name = os.path.split(dest)
    return os.path.join(head, f".{name}.{os.getpid()}-{next(_temp_counter)}.dwsb-part")


def is_temp_name_of(name: str, pid: int) -> bool:
    """True when `name` is one of the temporary names `temp_name` gives in process `pid`."""
    return re.fullmatch(rf"\..+\.{pid}-\d+\.dwsb-part", name, re.S) is not None


class ByteMover:
    """Copies byte ranges; remembers which kernel fast paths failed so later files skip them."""

    def __init__(self, chunk_size: int, bwlimit: int = 0) -> None:
        self.chunk_size = chunk_size if not bwlimit else max(4096, min(chunk_size, bwlimit // 10))
        self.bwlimit = bwlimit
        self._pace_lock = threading.Lock()
        self._next_free = 0.0
        self.use_copy_file_range = hasattr(os, "copy_file_range")
        self.use_sendfile = hasattr(os, "sendfile")

    def copy(self, fi: int, fo: int, size: int, blocks: int, on_chunk: Callable[[int], None]) -> None:
        """Copy `size` bytes; keep holes when the source looks sparse. `on_chunk(n)` may raise to stop."""
        if size == 0:
            return
        if blocks * 512 < size and self._copy_sparse(fi, fo, size, on_chunk):
            return
        self.copy_range(fi, fo, 0, size, on_chunk)

    def _copy_sparse(self, fi: int, fo: int, size: int, on_chunk: Callable[[int], None]) -> bool:
        try:
            start = os.lseek(fi, 0, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at all: one big hole
                os.ftruncate(fo, size)
                on_chunk(size)
                return True
            return False  # SEEK_DATA unsupported: copy densely
        done = 0
        while start < size:
            end = os.lseek(fi, start, os.SEEK_HOLE)
            end = min(end, size)
            if start > done:
                on_chunk(start - done)  # a hole counts as done
            self.copy_range(fi, fo, start, end - start, on_chunk)
            done = end
            try:
                start = os.lseek(fi, end, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                break
        os.ftruncate(fo, size)
        if size > done:
            on_chunk(size - done)
        return True

    def copy_range(self, fi: int, fo: int, offset: int, length: int, on_chunk: Callable[[int], None]) -> None:
        end = offset + length
        pos = offset
        while pos < end:
            want = min(self.chunk_size, end - pos)
            n = self._copy_chunk(fi, fo, pos, want)
            if n == 0:  # the source shrank while we copied it
                return
            pos += n
            self._pace(n)
            on_chunk(n)

    def _copy_chunk(self, fi: int, fo: int, pos: int, want: int) -> int:
        if self.use_copy_file_range:
            try:
                return os.copy_file_range(fi, fo, want, pos, pos)
            except OSError as exc:
                if exc.errno not in UNSUPPORTED:
                    raise
                self.use_copy_file_range = False
        if self.use_sendfile:
            try:
                os.lseek(fo, pos, os.SEEK_SET)
                return os.sendfile(fo, fi, pos, want)
            except OSError as exc:
                if exc.errno not in UNSUPPORTED:
                    raise
                self.use_sendfile = False
        data = os.pread(fi, min(want, _BUFFER), pos)
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(fo, view[written:], pos + written)
        return len(data)

    def _pace(self, n: int) -> None:
        """Hold the copy to `bwlimit` bytes/s across all workers (a shared schedule, like rsync --bwlimit)."""
        if not self.bwlimit:
            return
        with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + n / self.bwlimit
            wait = self._next_free - now
        if wait > 0:
            time.sleep(wait)
