"""The data mover: a parallel `cp -a` for files and trees, run as the job's user.

Semantics (see BENCHMARKS.md for speed):

- Destination: if `dest` is an existing directory (or a symlink to one), `src` is copied to
  `dest/basename(src)`; otherwise `dest` is created and its parent must already exist (like `cp -a`;
  parents are never created). A trailing slash on `src` changes nothing. Existing directories are merged;
  existing non-directories are replaced atomically; a directory never replaces a file or vice versa.
- Preserved: contents, mode (incl. setuid/setgid/sticky where the kernel allows), atime/mtime in ns,
  symlinks as symlinks (never followed, never written through), hard links within the copy, holes of sparse
  files (SEEK_DATA/SEEK_HOLE; dense copy where unsupported). Owner and group only when the copying
  process is root (otherwise the copying user owns the copy). Not copied: xattrs, ACLs.
- Special files: fifos are recreated; sockets and device nodes are skipped with a warning in
  `CopyResult.warnings` (recreating device nodes from user data as root would hand out device access).
- Partial files: files above `CopyOptions.atomic_min_size` (1 MiB) are written under a hidden temporary
  name (`.NAME.<pid>-<n>.dwsb-part`) and renamed into place when complete; smaller files (copied in one
  kernel call) are created in place. On error or cancellation the file in flight is removed before the call
  returns, so no incomplete file remains under its final name. A process killed with SIGKILL can leave
  temporary `.dwsb-part` files, and at worst `workers` small files under their final names.
- Progress: the walk is streamed (bounded queue), so totals grow while `Progress.scan_complete` is False;
  `percent` reaches 100 only in the final report, which always comes.
- Parallelism: a directory tree is copied by `CopyOptions.workers` processes forked from the calling
  process (the parent walks directories; each worker copies batches of one directory's entries); entries
  with several hard links and special files are finished by the parent. A single file, a dry run, or a
  copy with `bwlimit` uses threads. Workers are always reaped before `copy_tree` returns or raises.
- `s3://bucket/key` as source or destination: see copyoffload/mover/s3.py (boto3, as the user).
- Errors stop the copy at the first failure (`CopyError`, message `cannot <verb> <path>: <reason>`);
  directory modes and times are applied last, only when everything else succeeded.
"""

from copyoffload.mover.model import (
    DEFAULT_OPTIONS,
    CopyCancelled,
    CopyError,
    CopyOptions,
    CopyResult,
    Progress,
    S3Options,
    default_workers,
)
from copyoffload.mover.tree import copy_tree

# Not typing.TYPE_CHECKING: importing typing would cost the mover's child process several ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from copyoffload.mover.child import copy_as_user

__all__ = [
    "DEFAULT_OPTIONS",
    "CopyCancelled",
    "CopyError",
    "CopyOptions",
    "CopyResult",
    "Progress",
    "S3Options",
    "copy_as_user",
    "copy_tree",
    "default_workers",
]


def __getattr__(name: str) -> object:
    """`copy_as_user` (the parent side: subprocess, threads) loads on first use, so the mover's own child
    process, which imports this package, never imports it."""
    if name == "copy_as_user":
        from copyoffload.mover.child import copy_as_user

        return copy_as_user
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
