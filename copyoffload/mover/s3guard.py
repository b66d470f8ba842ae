"""Nothing half-done, even after SIGKILL: a guard process outlives an S3 copy that is killed.

A hurry teardown kills a copy's whole process group at once, so the copy cannot clean up after itself.
The copy therefore starts this guard (same user, own session, so outside that group) and tells it, over
a pipe, each multipart upload it opened and each directory it writes partial files in. When the pipe
closes without a final `done`, the guard removes those partial files (their names carry the copy's pid)
and aborts the multipart uploads, then exits. Protocol: one JSON object per line on the guard's stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from copyoffload.mover.files import is_temp_name_of
from copyoffload.mover.model import S3Options


class Guard:
    """The copy's side: a pipe to the guard process. Every call is cheap and thread-safe."""

    def __init__(self, options: S3Options) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "copyoffload.mover.s3guard", json.dumps(options.to_dict())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )

    def _send(self, **event: str) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with self._lock, contextlib.suppress(OSError, ValueError):
            stream = self._proc.stdin
            assert stream is not None
            stream.write(line)
            stream.flush()

    def partial_dir(self, path: str, pid: int) -> None:
        """Process `pid` writes partial files (files.temp_name) in directory `path`."""
        self._send(op="dir", path=path, pid=str(pid))

    def upload_opened(self, bucket: str, key: str, upload_id: str) -> None:
        self._send(op="upload", bucket=bucket, key=key, id=upload_id)

    def upload_closed(self, upload_id: str) -> None:
        self._send(op="closed", id=upload_id)

    def multipart_key(self, bucket: str, key: str) -> None:
        """A multipart upload of `key` may begin (its id may never reach us if we are killed first)."""
        self._send(op="key", bucket=bucket, key=key)

    def close(self, *, clean: bool = True) -> None:
        """`clean`: the copy finished or cleaned up after itself, the guard has nothing to do; else the
        guard cleans up what it was told about, as if the copy had been killed."""
        if clean:
            self._send(op="done")
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@dataclass
class Leftovers:
    """What a copy told the guard about and did not clear."""

    dirs: set[tuple[str, int]] = field(default_factory=set)  # (directory, pid writing partial files)
    uploads: dict[str, tuple[str, str]] = field(default_factory=dict)  # upload id -> (bucket, key)
    keys: set[tuple[str, str]] = field(default_factory=set)  # multipart uploads that may have begun


def watch(stream: IO[bytes]) -> tuple[bool, Leftovers]:
    """Read the copy's events to EOF: (finished cleanly, what it left)."""
    left = Leftovers()
    uploads = left.uploads
    done = False
    for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        op = event.get("op") if isinstance(event, dict) else None
        if op == "dir":
            left.dirs.add((str(event["path"]), int(event["pid"])))
        elif op == "upload":
            uploads[str(event["id"])] = (str(event["bucket"]), str(event["key"]))
        elif op == "closed":
            uploads.pop(str(event["id"]), None)
        elif op == "key":
            left.keys.add((str(event["bucket"]), str(event["key"])))
        elif op == "done":
            done = True
    return done, left


def clean_up(options: S3Options, left: Leftovers, since: float) -> None:
    """Remove partial files; abort known uploads, and uploads of the announced keys begun since `since`."""
    for directory, pid in left.dirs:
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if is_temp_name_of(name, pid):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
    if not left.uploads and not left.keys:
        return
    from copyoffload.mover.s3client import Connection

    client = Connection(options).client
    uploads = dict(left.uploads)
    for bucket, key in left.keys:
        with contextlib.suppress(Exception):
            listed = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
            for upload in listed:
                if upload.get("Key") == key and upload["Initiated"].timestamp() >= since:
                    uploads[str(upload["UploadId"])] = (bucket, key)
    for upload_id, (bucket, key) in uploads.items():
        with contextlib.suppress(Exception):  # already completed or aborted: nothing left to do
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def main(argv: list[str]) -> int:
    started = time.time() - 2.0  # the copy started just before us; allow for clock granularity
    options = S3Options.from_mapping(json.loads(argv[0]))
    done, left = watch(sys.stdin.buffer)
    if not done:
        clean_up(options, left, started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
