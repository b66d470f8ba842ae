"""Nothing half-done, even after SIGKILL: a guard process outlives an S3 copy that is killed.

A hurry teardown kills a copy's whole process group at once, so the copy cannot clean up after itself.
The copy therefore starts this guard (same user, own session, so outside that group) and tells it, over
a pipe, each multipart upload it opened and each partial file it is writing. When the pipe closes
without a final `done`, the guard removes the partial files and aborts the multipart uploads, then
exits. Protocol: one JSON object per line on the guard's stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from typing import IO

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

    def partial_file(self, path: str) -> None:
        self._send(op="file", path=path)

    def file_placed(self, path: str) -> None:
        self._send(op="placed", path=path)

    def upload_opened(self, bucket: str, key: str, upload_id: str) -> None:
        self._send(op="upload", bucket=bucket, key=key, id=upload_id)

    def upload_closed(self, upload_id: str) -> None:
        self._send(op="closed", id=upload_id)

    def close(self) -> None:
        """The copy cleaned up after itself (or finished): the guard has nothing to do."""
        self._send(op="done")
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def watch(stream: IO[bytes]) -> tuple[bool, set[str], dict[str, tuple[str, str]]]:
    """Read the copy's events to EOF: (finished cleanly, partial files, open uploads)."""
    files: set[str] = set()
    uploads: dict[str, tuple[str, str]] = {}
    done = False
    for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        op = event.get("op") if isinstance(event, dict) else None
        if op == "file":
            files.add(str(event["path"]))
        elif op == "placed":
            files.discard(str(event["path"]))
        elif op == "upload":
            uploads[str(event["id"])] = (str(event["bucket"]), str(event["key"]))
        elif op == "closed":
            uploads.pop(str(event["id"]), None)
        elif op == "done":
            done = True
    return done, files, uploads


def clean_up(options: S3Options, files: set[str], uploads: dict[str, tuple[str, str]]) -> None:
    for path in files:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if not uploads:
        return
    from copyoffload.mover.s3client import Connection

    client = Connection(options).client
    for upload_id, (bucket, key) in uploads.items():
        with contextlib.suppress(Exception):  # already completed or aborted: nothing left to do
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def main(argv: list[str]) -> int:
    options = S3Options.from_mapping(json.loads(argv[0]))
    done, files, uploads = watch(sys.stdin.buffer)
    if not done:
        clean_up(options, files, uploads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
