"""`s3://` sources and destinations for the mover, with s3transfer (parallel multipart upload and
ranged download), as the calling process (the job's user, in the mover's child).

Semantics:
- Download. `s3://b/key` naming an object copies that one file (into `dest` when it is a directory, else
  to `dest`). A key ending in `/`, the bucket root, or a key that names no object but has objects under
  `key/` copies that prefix's tree into `dest` (made if absent; its parent must exist; merged if present):
  keys map to paths, directories are implied by `/` (`dir/` marker objects make empty directories).
  A key that does not map to a safe relative path (empty, `.` or `..` components) stops the copy.
  Files are written under a hidden temporary name and renamed into place (mode 0644, mtime = the
  object's LastModified); partial files never remain, even after SIGKILL (see s3guard.py).
- Upload. A file goes to `s3://b/key`, or to `prefix/<name>` when the URL ends in `/` (or is the bucket);
  a directory's regular files go to `<key>/<relative path>`. Symlinks and special files are skipped with
  a warning; empty directories are not stored. An interrupted multipart upload is aborted.
- Progress, cancellation and errors behave as for file copies (CopyCancelled, CopyError naming the URL).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from copyoffload.mover.files import temp_name
from copyoffload.mover.model import CopyCancelled, CopyError, CopyOptions, CopyResult, Progress
from copyoffload.mover.s3client import Connection
from copyoffload.mover.s3guard import Guard
from copyoffload.s3url import S3Url, is_s3_url, parse_s3_url

FILE_MODE, DIR_MODE = 0o644, 0o755
# After a cancel or a failure, in-flight requests get this long to end before they are abandoned.
STOP_GRACE_SECONDS = 0.5
_MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload


def s3_copy(
    src: str,
    dest: str,
    *,
    options: CopyOptions,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> CopyResult:
    """Copy between a local path and an `s3://` URL (one of the two must be local)."""
    if is_s3_url(src) and is_s3_url(dest):
        raise CopyError(
            f"cannot copy {src} to {dest}: copies between two S3 URLs are not supported; "
            "stage through job storage",
            path=src,
        )
    downloading = is_s3_url(src)
    text = src if downloading else dest
    try:
        url = parse_s3_url(text)
    except ValueError as exc:
        raise CopyError(f"cannot copy {src} to {dest}: {exc}", path=text) from None
    connection = Connection(options.s3)
    connection.require_credentials("read" if downloading else "write", text)
    transfer: _Transfer = (
        _Download(connection, url, dest, options, progress, cancel)
        if downloading
        else _Upload(connection, url, src, options, progress, cancel)
    )
    return transfer.run()


@dataclass
class _Item:
    key: str
    path: str
    size: int
    mtime: float = 0.0
    etag: str = ""  # known from the listing or HEAD (downloads): s3transfer need not HEAD again
    index: int = -1
    settled: bool = False


class _Transfer:
    """What downloads and uploads share: the plan, the s3transfer manager, progress, cancel, cleanup."""

    verb = "copy"  # what is done to the S3 side
    local_verb = "copy"  # and to the local side

    def __init__(
        self,
        connection: Connection,
        url: S3Url,
        options: CopyOptions,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.conn = connection
        self.url = url
        self.options = options
        self.progress_cb = progress
        self.cancel = cancel or threading.Event()
        self.lock = threading.Lock()
        self.bytes_done = 0
        self.files_done = 0
        self.bytes_total = 0
        self.files_total = 0
        self.dirs = 0
        self.warnings: list[str] = []
        self.completions: queue.Queue[tuple[_Item, BaseException | None]] = queue.Queue()
        self.futures: dict[int, Any] = {}  # item index -> s3transfer future, while it runs
        self.stopping = False
        self.abandoned = False

    # --- to be provided ------------------------------------------------------------------------
    def plan(self) -> list[_Item]:
        raise NotImplementedError

    def submit(self, manager: Any, item: _Item, subscribers: list[Any]) -> Any:
        """Start the item's transfer; its s3transfer future."""
        raise NotImplementedError

    def finish_item(self, item: _Item) -> None:
        """The item's transfer succeeded: put it in place."""

    def discard_item(self, item: _Item) -> None:
        """The item's transfer failed or was cancelled: remove what it left."""

    def target(self, item: _Item) -> str:
        raise NotImplementedError

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> CopyResult:
        items = self.plan()
        self.files_total = len(items)
        self.bytes_total = sum(i.size for i in items)
        if self.options.dry_run or not items:
            return self.result(dry_run=self.options.dry_run)
        guard = Guard(self.options.s3)
        self.guard = guard
        try:
            self._transfer_all(items)
        finally:
            guard.close(clean=not self.abandoned)
        return self.result()

    def result(self, dry_run: bool = False) -> CopyResult:
        if self.progress_cb is not None:
            self.progress_cb(self._snapshot(finished=True))
        return CopyResult(
            files=self.files_total,
            dirs=self.dirs,
            symlinks=0,
            bytes=self.bytes_total,
            dry_run=dry_run,
            warnings=tuple(self.warnings),
        )

    def transfer_config(self, items: list[_Item]) -> Any:
        """Parts no smaller than the site's, and large enough that no object needs more ranges than
        there are workers (fewer, longer requests) or more parts than S3 allows."""
        from boto3.s3.transfer import TransferConfig

        s3 = self.options.s3
        largest = max((i.size for i in items), default=0)
        chunk = max(
            s3.multipart_chunksize,
            math.ceil(largest / s3.max_concurrency) if self.spread_ranges else 0,
            math.ceil(largest / _MAX_PARTS),
        )
        return TransferConfig(
            multipart_threshold=s3.multipart_threshold,
            multipart_chunksize=chunk,
            max_concurrency=s3.max_concurrency,
            use_threads=True,
        )

    spread_ranges = False

    def _transfer_all(self, items: list[_Item]) -> None:
        from s3transfer.manager import TransferManager

        manager = TransferManager(self.conn.client, self.transfer_config(items))
        window = threading.Semaphore(self.options.s3.max_concurrency * 4)
        pending: set[int] = set()
        failure: BaseException | None = None
        reporter = threading.Thread(target=self._report, daemon=True)
        stop_reporting = threading.Event()
        self._stop_reporting = stop_reporting
        reporter.start()
        try:
            for index, item in enumerate(items):
                while not window.acquire(timeout=0.05):
                    failure = failure or self._drain(pending)
                    if failure is not None or self.cancel.is_set():
                        break
                if failure is not None or self.cancel.is_set():
                    break
                pending.add(index)
                item.index = index
                subscriber = _Subscriber(self, item, window)
                try:
                    self.futures[index] = self.submit(manager, item, [subscriber])
                except BaseException as exc:
                    pending.discard(index)
                    window.release()
                    failure = exc
                    break
                failure = failure or self._drain(pending)
                if failure is not None:
                    break
            while pending and failure is None and not self.cancel.is_set():
                failure = self._drain(pending, wait=0.05)
        except BaseException as exc:
            failure = exc
        finally:
            # A cancel that comes after the last item was placed changes nothing: the copy is complete.
            cancelled = self.cancel.is_set() and failure is None and self.files_done < len(items)
            settled = True
            if failure is not None or cancelled:
                self.stopping = True
                for future in list(self.futures.values()):
                    future.cancel()  # (s3transfer's shutdown(cancel=True) is broken in 0.19)
                settled = _shut_down_within(manager, STOP_GRACE_SECONDS)
            else:
                manager.shutdown()
            while True:  # everything submitted has now ended: settle it
                try:
                    item, problem = self.completions.get_nowait()
                except queue.Empty:
                    break
                self._settle(item, problem)
            cancelled = cancelled and self.files_done < len(items)
            self.discard_unsettled(items)
            if not settled:
                self.abandon()
            stop_reporting.set()
            reporter.join()
        if failure is not None:
            if isinstance(failure, CopyCancelled | KeyboardInterrupt):
                raise failure
            raise self.conn.failure(failure, self.verb, self.describe(failure)) from None
        if cancelled:
            raise CopyCancelled(f"copy of {self.url} was cancelled")

    def describe(self, failure: BaseException) -> str:
        return str(getattr(failure, "s3_target", "") or self.url)

    def discard_unsettled(self, items: list[_Item]) -> None:
        """After a stop: whatever was started and not placed is removed (hook for downloads)."""

    def abandon(self) -> None:
        """Requests still in flight after a stop are left to die with the process (a server may take
        long to answer a request it has begun): undo what they would have finished (hook for uploads).
        The guard then cleans up too, in case a request lands after this process is gone."""
        self.abandoned = True

    def _drain(self, pending: set[int], wait: float = 0.0) -> BaseException | None:
        """Settle finished items; the first failure, if any."""
        failure: BaseException | None = None
        while True:
            try:
                item, exc = self.completions.get(timeout=wait) if wait else self.completions.get_nowait()
            except queue.Empty:
                return failure
            wait = 0.0
            pending.discard(item.index)
            problem = self._settle(item, exc)
            failure = failure or problem

    def _settle(self, item: _Item, exc: BaseException | None) -> BaseException | None:
        if item.settled:
            return None
        item.settled = True
        self.futures.pop(item.index, None)
        if exc is None:
            with self.lock:
                self.files_done += 1
            return None
        if isinstance(exc, CopyError):
            return exc
        if self.stopping and _is_cancellation(exc):
            return None
        with contextlib.suppress(AttributeError, TypeError):
            exc.s3_target = self.source_of(item)  # type: ignore[attr-defined]
        return exc

    def source_of(self, item: _Item) -> str:
        """The S3 URL of the item (what an S3 error names)."""
        return f"s3://{self.url.bucket}/{item.key}"

    def local_failure(self, item: _Item, err: OSError) -> CopyError:
        target = self.target(item)
        reason = os.strerror(err.errno) if err.errno else str(err)
        return CopyError(f"cannot {self.local_verb} {target}: {reason}", path=target)

    def _snapshot(self, finished: bool = False) -> Progress:
        with self.lock:
            return Progress(
                bytes_done=max(0, min(self.bytes_done, self.bytes_total)),
                bytes_total=self.bytes_total,
                files_done=self.files_done,
                files_total=self.files_total,
                scan_complete=True,
                finished=finished,
            )

    def _report(self) -> None:
        if self.progress_cb is None:
            return
        while not self._stop_reporting.wait(self.options.progress_interval):
            self.progress_cb(self._snapshot())

    def add_bytes(self, amount: int) -> None:
        with self.lock:
            self.bytes_done += amount


class _Subscriber:
    """s3transfer's callbacks for one item: bytes moved, and the end (success or failure)."""

    def __init__(self, transfer: _Transfer, item: _Item, window: threading.Semaphore) -> None:
        self.transfer = transfer
        self.item = item
        self.window = window

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        """Size and ETag are known (listing, HEAD, stat): s3transfer need not HEAD each object again
        (and the ETag makes a ranged download fail rather than mix two versions of an object)."""
        future.meta.provide_transfer_size(self.item.size)
        if self.item.etag:
            future.meta.provide_object_etag(self.item.etag)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self.transfer.add_bytes(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        """Runs in s3transfer's thread: the item is put in place (or removed) here, in parallel."""
        exc: BaseException | None = None
        try:
            future.result()
        except BaseException as err:
            exc = err
        if exc is None:
            try:
                self.transfer.finish_item(self.item)
            except OSError as err:
                exc = self.transfer.local_failure(self.item, err)
        if exc is not None:
            self.transfer.discard_item(self.item)
        self.transfer.completions.put((self.item, exc))
        self.window.release()


def _shut_down_within(manager: Any, seconds: float) -> bool:
    """Let s3transfer wind down for up to `seconds`; False when requests are still in flight."""
    stopper = threading.Thread(target=manager.shutdown, daemon=True)
    stopper.start()
    stopper.join(seconds)
    return not stopper.is_alive()


def _is_cancellation(exc: BaseException) -> bool:
    from s3transfer.exceptions import CancelledError, FatalError

    return isinstance(exc, CancelledError | FatalError)


# --------------------------------------------------------------------------------------------------
# Download


class _Download(_Transfer):
    verb = "read"
    local_verb = "write"
    spread_ranges = True

    def __init__(
        self,
        connection: Connection,
        url: S3Url,
        dest: str,
        options: CopyOptions,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        super().__init__(connection, url, options, progress, cancel)
        self.dest = dest
        self.parts: dict[int, _PartFile] = {}  # item index -> its temporary file, until it is settled
        self.announced: set[str] = set()  # directories the guard knows we write partial files in

    def plan(self) -> list[_Item]:
        url = self.url
        if not url.is_prefix:
            head = self._head(url.key)
            if head is not None:
                target = _resolve_target(url.key.rsplit("/", 1)[-1], self.dest, str(url))
                return [
                    _Item(
                        url.key, target, int(head["ContentLength"]), _mtime(head), str(head.get("ETag", ""))
                    )
                ]
        prefix = url.key if url.is_prefix else url.key + "/"
        objects = list(self._list(prefix))
        if not objects:
            where = f"s3://{url.bucket}/{prefix}"
            if url.is_prefix:
                raise CopyError(
                    f"cannot read {where}: no objects under this prefix; check the prefix", path=where
                )
            raise CopyError(
                f"cannot read {url}: no object '{url.key}' and no objects under '{prefix}' in bucket "
                f"'{url.bucket}': check the key (keys are case-sensitive)",
                path=str(url),
            )
        top = self.dest
        if not self.options.dry_run:
            self._make_top(top)
        items: list[_Item] = []
        for obj in objects:
            key = str(obj["Key"])
            relative = _relative_path(key[len(prefix) :], f"s3://{url.bucket}/{key}")
            if relative is None:
                continue  # the prefix's own marker object
            if key.endswith("/"):
                self._make_dirs(os.path.join(top, relative))
                continue
            path = os.path.join(top, relative)
            self._make_dirs(os.path.dirname(path))
            items.append(_Item(key, path, int(obj["Size"]), _mtime(obj), str(obj.get("ETag", ""))))
        return items

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata, or None when it does not exist (then the key may be a prefix)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return dict(self.conn.client.head_object(Bucket=self.url.bucket, Key=key))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            # HEAD answers have no body: ask again with a GET to learn which error it is.
            try:
                self.conn.client.get_object(Bucket=self.url.bucket, Key=key, Range="bytes=0-0")
            except (ClientError, BotoCoreError) as detail:
                raise self.conn.failure(detail, "read", str(self.url)) from None
            raise self.conn.failure(exc, "read", str(self.url)) from None
        except BotoCoreError as exc:
            raise self.conn.failure(exc, "read", str(self.url)) from None

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        where = str(self.url)
        try:
            pages = self.conn.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.url.bucket, Prefix=prefix
            )
            for page in pages:
                if self.cancel.is_set():
                    raise CopyCancelled(f"copy of {self.url} was cancelled")
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError) as exc:
            raise self.conn.failure(exc, "read", where) from None

    def _make_top(self, top: str) -> None:
        try:
            os.mkdir(top, DIR_MODE)
            os.chmod(top, DIR_MODE)
            self.dirs += 1
        except FileExistsError:
            if not os.path.isdir(top):
                raise CopyError(
                    f"cannot copy {self.url} to {top}: it exists and is not a directory", path=top
                ) from None
        except OSError as exc:
            raise CopyError(f"cannot create {top}: {os.strerror(exc.errno or 0)}", path=top) from None

    def _make_dirs(self, path: str) -> None:
        """Directories under the destination, never through a symlink."""
        if self.options.dry_run:
            return
        top = os.path.normpath(self.dest)
        relative = os.path.relpath(path, top)
        if relative == ".":
            return
        current = top
        for part in relative.split(os.sep):
            current = os.path.join(current, part)
            try:
                os.mkdir(current, DIR_MODE)
                os.chmod(current, DIR_MODE)
                self.dirs += 1
            except FileExistsError:
                info = os.lstat(current)
                if not stat.S_ISDIR(info.st_mode):
                    raise CopyError(
                        f"cannot create directory {current}: it exists and is not a directory "
                        "(an object and a prefix of the same name?)",
                        path=current,
                    ) from None
            except OSError as exc:
                raise CopyError(
                    f"cannot create {current}: {os.strerror(exc.errno or 0)}", path=current
                ) from None

    def submit(self, manager: Any, item: _Item, subscribers: list[Any]) -> Any:
        directory = os.path.dirname(item.path)
        if directory not in self.announced:
            self.announced.add(directory)
            self.guard.partial_dir(directory, os.getpid())
        part = _PartFile(item.path)
        with self.lock:
            self.parts[item.index] = part
        return manager.download(self.url.bucket, item.key, part, subscribers=subscribers)

    def finish_item(self, item: _Item) -> None:
        with self.lock:
            part = self.parts[item.index]
        part.place(item.mtime)
        with self.lock:
            self.parts.pop(item.index, None)

    def discard_item(self, item: _Item) -> None:
        with self.lock:
            part = self.parts.pop(item.index, None)
        if part is not None:
            part.discard()

    def discard_unsettled(self, items: list[_Item]) -> None:
        with self.lock:
            parts = list(self.parts.values())
            self.parts.clear()
        for part in parts:
            part.discard()

    def target(self, item: _Item) -> str:
        return item.path


class _PartFile:
    """The temporary file a download writes (s3transfer seeks and writes it from its IO thread): made
    at the first write, so the submitting thread never waits on the file system, and never again once
    discarded; `place` renames it to its final name."""

    _FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, final: str) -> None:
        self.final = final
        self.temp = temp_name(final)
        self._handle: Any = None
        self._dead = False
        self._lock = threading.Lock()

    def _file(self) -> Any:
        if self._handle is None:
            if self._dead:
                raise OSError(errno.ECANCELED, "the copy was stopped")
            self._handle = os.fdopen(os.open(self.temp, self._FLAGS, 0o600), "wb")
        return self._handle

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        with self._lock:
            return int(self._file().seek(offset, whence))

    def tell(self) -> int:
        with self._lock:
            return int(self._file().tell())

    def write(self, data: bytes) -> int:
        with self._lock:
            return int(self._file().write(data))

    def place(self, mtime: float) -> None:
        with self._lock:
            handle = self._file()  # an empty object was never written: make it now
            self._dead, self._handle = True, None
            try:
                handle.close()
                os.chmod(self.temp, FILE_MODE)
                if mtime:
                    os.utime(self.temp, (mtime, mtime))
                os.replace(self.temp, self.final)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(self.temp)
                raise

    def discard(self) -> None:
        with self._lock:
            self._dead = True
            handle, self._handle = self._handle, None
            if handle is None:
                return
            with contextlib.suppress(OSError, ValueError):
                handle.close()
            with contextlib.suppress(OSError):
                os.unlink(self.temp)


def _resolve_target(name: str, dest: str, source: str) -> str:
    if os.path.isdir(dest):
        if name in ("", ".", ".."):
            raise CopyError(f"cannot copy {source}: its key has no usable file name", path=source)
        return os.path.join(dest, name)
    return dest


def _relative_path(rest: str, where: str) -> str | None:
    """The local relative path of a key below the prefix; None for the prefix's own marker."""
    if rest == "":
        return None
    parts = rest[:-1].split("/") if rest.endswith("/") else rest.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(len(p.encode()) > 255 for p in parts):
        raise CopyError(
            f"cannot read {where}: the key does not map to a safe file path (an empty, '.' or '..' "
            "component, or a name over 255 bytes); rename the object or copy a narrower prefix",
            path=where,
        )
    return os.path.join(*parts)


def _mtime(obj: dict[str, Any]) -> float:
    value: Any = obj.get("LastModified")
    return float(value.timestamp()) if hasattr(value, "timestamp") else 0.0


# --------------------------------------------------------------------------------------------------
# Upload


class _Upload(_Transfer):
    verb = "write"
    local_verb = "read"

    def __init__(
        self,
        connection: Connection,
        url: S3Url,
        src: str,
        options: CopyOptions,
        progress: Callable[[Progress], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        super().__init__(connection, url, options, progress, cancel)
        self.src = src
        self.open_uploads: dict[str, str] = {}  # key -> multipart upload id
        connection.client.meta.events.register("after-call.s3.CreateMultipartUpload", self._multipart_opened)

    def _multipart_opened(self, http_response: Any = None, parsed: Any = None, **kwargs: Any) -> None:
        """Tell the guard, so that a killed copy leaves no multipart upload behind."""
        if http_response is None or http_response.status_code >= 300 or not isinstance(parsed, dict):
            return
        key, upload_id = str(parsed.get("Key", "")), str(parsed.get("UploadId", ""))
        with self.lock:
            self.open_uploads[key] = upload_id
        self.guard.upload_opened(self.url.bucket, key, upload_id)

    def _multipart_closed(self, item: _Item) -> None:
        """Completed, or aborted by s3transfer (its failure cleanup runs before the item's on_done)."""
        with self.lock:
            upload_id = self.open_uploads.pop(item.key, None)
        if upload_id is not None:
            self.guard.upload_closed(upload_id)

    def plan(self) -> list[_Item]:
        try:
            info = os.stat(self.src)
        except OSError as exc:
            raise CopyError(f"cannot read {self.src}: {os.strerror(exc.errno or 0)}", path=self.src) from None
        if stat.S_ISREG(info.st_mode):
            key = (
                self.url.child(os.path.basename(os.path.normpath(self.src))).key
                if self.url.is_prefix
                else self.url.key
            )
            return [_Item(key, self.src, info.st_size)]
        if not stat.S_ISDIR(info.st_mode):
            raise CopyError(f"cannot copy {self.src}: not a regular file or a directory", path=self.src)
        items: list[_Item] = []
        self._walk(self.src, "", items)
        return items

    def _walk(self, directory: str, relative: str, items: list[_Item]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise CopyError(
                f"cannot read {directory}: {os.strerror(exc.errno or 0)}", path=directory
            ) from None
        for entry in entries:
            name = relative + entry.name
            if entry.is_dir(follow_symlinks=False):
                self._walk(entry.path, name + "/", items)
                self.dirs += 1
            elif entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                items.append(_Item(self.url.child(name).key, entry.path, size))
            else:
                kind = "symlink" if entry.is_symlink() else "special file"
                self.warnings.append(f"skipped {kind} {entry.path} (only regular files go to S3)")

    def submit(self, manager: Any, item: _Item, subscribers: list[Any]) -> Any:
        if item.size >= self.options.s3.multipart_threshold:
            self.guard.multipart_key(self.url.bucket, item.key)
        return manager.upload(item.path, self.url.bucket, item.key, subscribers=subscribers)

    def abandon(self) -> None:
        super().abandon()
        with self.lock:
            uploads = list(self.open_uploads.items())
            self.open_uploads.clear()
        for key, upload_id in uploads:
            with contextlib.suppress(Exception):
                self.conn.client.abort_multipart_upload(Bucket=self.url.bucket, Key=key, UploadId=upload_id)

    def finish_item(self, item: _Item) -> None:
        self._multipart_closed(item)

    def discard_item(self, item: _Item) -> None:
        self._multipart_closed(item)

    def target(self, item: _Item) -> str:
        return f"s3://{self.url.bucket}/{item.key}"
