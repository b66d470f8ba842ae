"""`s3://bucket/key` URLs as staging paths: recognised and checked with the standard library only, so
the submit path (directive validation) can judge them without importing boto3."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "s3://"
# S3's bucket naming rules (3-63 characters; lower-case letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Url:
    """A bucket and a key; `key` is "" for the whole bucket. A key ending in `/` names a prefix."""

    bucket: str
    key: str

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def child(self, name: str) -> S3Url:
        """The key `name` under this URL read as a prefix (`s3://b/out` + `x` -> `s3://b/out/x`)."""
        base = self.key if self.is_prefix else self.key + "/"
        return S3Url(self.bucket, base + name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def is_s3_url(value: str) -> bool:
    return value[:5].lower() == SCHEME


def parse_s3_url(value: str) -> S3Url:
    """Split `s3://bucket/key`; ValueError says what is wrong in words a job-script author can act on."""
    if not is_s3_url(value):
        raise ValueError(f"'{value}' is not an S3 URL: write s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    bucket, _, key = value[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"'{value}' names no bucket: write s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"'{value}': '{bucket}' is not a valid bucket name (3-63 lower-case letters, digits, '.', '-')"
        )
    if "\0" in key or len(key.encode()) > 1024:
        raise ValueError(f"'{value}': an S3 key is at most 1024 bytes and holds no NUL character")
    return S3Url(bucket, key)
