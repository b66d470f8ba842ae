"""An S3 API server on loopback for tests and benchmarks: moto's ThreadedMotoServer, in a process of its
own, with authentication ON (moto's IAM checks every request's signature and the caller's policy).

    python -m testenv.s3server --port 6891 --ready-file F --user alice=alice-data,shared --user bob=bob-data

Each `--user NAME=BUCKET,...` becomes an IAM user with its own access key, allowed s3:* on its buckets
only; an `admin` user may do anything (tests use it to inspect buckets). The buckets are created. When
the server answers, the ready file (mode 0600) holds JSON: {"endpoint": URL, "users": {NAME:
{"access_key": ..., "secret_key": ...}}}. SIGTERM stops it. Nothing but 127.0.0.1 is ever bound.

Objects under a `slow/` prefix are served at `--slow-rate` bytes/s (a slow link), so that tests can
interrupt a download midway however fast this machine is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REGION = "us-east-1"


def _policy(buckets: list[str] | None) -> str:
    resources = (
        ["*"]
        if buckets is None
        else [f"arn:aws:s3:::{b}" for b in buckets] + [f"arn:aws:s3:::{b}/*" for b in buckets]
    )
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}
    )


SLOW_CHUNK = 64 * 1024


class SlowKeys:
    """WSGI middleware: for keys under `slow/`, GET responses trickle out and PUT bodies trickle in at
    `rate` bytes/s."""

    def __init__(self, app: Any, rate: int) -> None:
        self.app = app
        self.rate = rate

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        slow = "/slow/" in environ.get("PATH_INFO", "")
        if slow and environ.get("REQUEST_METHOD") == "PUT":
            environ["wsgi.input"] = _SlowReader(environ["wsgi.input"], self.rate)
        body = self.app(environ, start_response)
        if not slow or environ.get("REQUEST_METHOD") != "GET":
            return body
        return self._trickle(body)

    def _trickle(self, body: Any) -> Iterator[bytes]:
        try:
            for chunk in body:
                for start in range(0, len(chunk), SLOW_CHUNK):
                    time.sleep(SLOW_CHUNK / self.rate)
                    yield chunk[start : start + SLOW_CHUNK]
        finally:
            if hasattr(body, "close"):
                body.close()


class _SlowReader:
    def __init__(self, stream: Any, rate: int) -> None:
        self.stream = stream
        self.rate = rate

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(SLOW_CHUNK if size is None or size < 0 else min(size, SLOW_CHUNK))
        time.sleep(len(data) / self.rate)
        if size is None or size < 0:
            rest = [data]
            while data:
                data = self.read(SLOW_CHUNK)
                rest.append(data)
            return b"".join(rest)
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[:SLOW_CHUNK]
        count = int(self.stream.readinto(view) or 0)
        time.sleep(count / self.rate)
        return count

    def readline(self, size: int = -1) -> bytes:
        return bytes(self.stream.readline(size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _serve(port: int, rate: int) -> Any:
    """moto's ThreadedMotoServer, its app wrapped in SlowKeys."""
    from moto.moto_server import threaded_moto_server as tms

    class Server(tms.ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = SlowKeys(tms.DomainDispatcherApplication(tms.create_backend_app), rate)
            self._server = tms.make_server(
                self._ip_address, self._port, app, True, request_handler=tms.MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    server = Server(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testenv.s3server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--user", action="append", default=[], metavar="NAME=BUCKET,...")
    parser.add_argument(
        "--slow-rate", type=int, default=8 << 20, metavar="BYTES", help="for keys under slow/"
    )
    args = parser.parse_args(argv)
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # read by moto.settings at import: auth on
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    from moto.s3.models import s3_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["global"]
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    users: dict[str, dict[str, str]] = {}
    grants: list[tuple[str, list[str] | None]] = [("admin", None)]
    for spec in args.user:
        name, _, buckets = spec.partition("=")
        grants.append((name, [b for b in buckets.split(",") if b]))
    for name, buckets in grants:
        iam.create_user(REGION, name)
        iam.put_user_policy(name, "s3", _policy(buckets))
        key = iam.create_access_key(name)
        users[name] = {"access_key": key.access_key_id, "secret_key": key.secret_access_key}
        for bucket in buckets or []:
            s3.create_bucket(bucket, REGION)
    server = _serve(args.port, args.slow_rate)
    ready = Path(args.ready_file)
    fd = os.open(ready.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"endpoint": f"http://127.0.0.1:{args.port}", "users": users}, handle)
    os.replace(ready.with_suffix(".tmp"), ready)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
