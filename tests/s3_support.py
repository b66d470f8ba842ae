"""The S3 test environment: testenv/s3server.py (moto, authentication on) in a process of its own, and
test users whose S3 credentials live in a home directory the test creates (`~/.aws`, mode 0600).

Port: DWSB_S3_PORT (default 6891, in this module's range 6890-6899)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers_users import ensure_user

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 6891


@dataclass
class S3Server:
    endpoint: str
    users: dict[str, dict[str, str]]  # IAM user -> access_key, secret_key

    def client(self, user: str = "admin") -> Any:
        import boto3

        keys = self.users[user]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=keys["access_key"],
            aws_secret_access_key=keys["secret_key"],
            region_name="us-east-1",
        )

    def secrets(self) -> list[str]:
        return [v for keys in self.users.values() for v in keys.values()]


@contextlib.contextmanager
def running_s3_server(users: dict[str, list[str]], port: int | None = None) -> Iterator[S3Server]:
    port = port or int(os.environ.get("DWSB_S3_PORT", DEFAULT_PORT))
    workdir = Path(tempfile.mkdtemp(prefix="dwsbt-s3srv-"))
    ready = workdir / "ready.json"
    argv = [sys.executable, "-m", "testenv.s3server", "--port", str(port), "--ready-file", str(ready)]
    for name, buckets in users.items():
        argv += ["--user", f"{name}={','.join(buckets)}"]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"S3 test server did not start: {(workdir / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        yield S3Server(info["endpoint"], info["users"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class S3User:
    """An ordinary user with a home directory (made by the test) holding its S3 credentials."""

    name: str
    uid: int
    gid: int
    home: Path


def user_with_home(name: str, home_parent: Path) -> S3User:
    """`name` (created if missing) with a fresh home under `home_parent`, owned by it, mode 0700."""
    uid, gid = ensure_user(name)
    home = home_parent / name
    home.mkdir(mode=0o700)
    os.chown(home, uid, gid)
    subprocess.run(["usermod", "-d", str(home), name], check=True, capture_output=True)
    assert pwd.getpwnam(name).pw_dir == str(home)
    return S3User(name, uid, gid, home)


def write_aws_files(
    user: S3User, profiles: dict[str, dict[str, str]], config: dict[str, dict[str, str]]
) -> None:
    """~/.aws/credentials and ~/.aws/config as the user would write them (owned by the user, 0600)."""
    aws = user.home / ".aws"
    aws.mkdir(mode=0o700, exist_ok=True)
    os.chown(aws, user.uid, user.gid)
    for filename, sections, header in (("credentials", profiles, "{}"), ("config", config, "profile {}")):
        lines = []
        for section, values in sections.items():
            title = section if section == "default" else header.format(section)
            lines.append(f"[{title}]")
            lines += [f"{k} = {v}" for k, v in values.items()]
        path = aws / filename
        path.write_text("\n".join(lines) + "\n")
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o600)


def give_credentials(user: S3User, server: S3Server, iam_user: str, profile: str = "default") -> None:
    keys = server.users[iam_user]
    write_aws_files(
        user,
        {profile: {"aws_access_key_id": keys["access_key"], "aws_secret_access_key": keys["secret_key"]}},
        {profile: {"endpoint_url": server.endpoint, "region": "us-east-1"}},
    )
