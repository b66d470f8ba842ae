"""The S3 client of one copy, made as the job's user: boto3's standard credential resolution in that
user's home, the site's settings, and errors that name the bucket and key and say what to do.

boto3 is imported here and only here, when a copy touches an `s3://` path."""

from __future__ import annotations

import os
from typing import Any

from copyoffload.mover.model import CopyError, S3Options

INSTALL_HINT = "install the s3 extra (pip install 'dwsbridge[s3]') or boto3"
_REDACTED = "[redacted]"


class Connection:
    """A boto3 S3 client for this user; `failure()` turns any exception into a CopyError free of
    credentials (every message is scrubbed of the access key, secret key and session token)."""

    def __init__(self, options: S3Options) -> None:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ProfileNotFound
        except ImportError:
            raise CopyError(f"s3:// paths need boto3, which is not installed: {INSTALL_HINT}") from None
        self.options = options
        self._secrets: list[str] = []
        try:
            self.session = boto3.session.Session(
                profile_name=options.profile or None, region_name=options.region or None
            )
        except ProfileNotFound:
            raise CopyError(
                f"S3 profile '{options.profile}' is not defined for this user: add [profile "
                f"{options.profile}] to ~/.aws/config (or [{options.profile}] to ~/.aws/credentials), "
                "or choose another profile"
            ) from None
        self.profile = options.profile or self.session.profile_name or "default"
        endpoint = None if self._user_endpoint() else (options.endpoint_url or None)
        config = Config(
            s3={"addressing_style": options.addressing_style},
            max_pool_connections=options.max_concurrency + 2,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        verify: bool | str = options.ca_bundle or options.verify_tls
        try:
            self.client: Any = self.session.client("s3", endpoint_url=endpoint, verify=verify, config=config)
            credentials = self.session.get_credentials()
        except BotoCoreError as exc:
            raise self.failure(exc, "reach", "S3") from None
        self.endpoint = str(self.client.meta.endpoint_url)
        if credentials is None:
            self.has_credentials = False
            return
        self.has_credentials = True
        frozen = credentials.get_frozen_credentials()
        self._secrets = [s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s]

    def _user_endpoint(self) -> bool:
        """True when the user's own config or environment names an endpoint (it wins over the site's)."""
        if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
            return True
        scoped = self.session._session.get_scoped_config()  # the chosen profile's settings
        if scoped.get("endpoint_url"):
            return True
        s3_section = scoped.get("s3")
        if isinstance(s3_section, dict) and s3_section.get("endpoint_url"):
            return True
        services = scoped.get("services")
        if services:
            section = self.session._session.full_config.get("services", {}).get(services, {})
            s3 = section.get("s3") if isinstance(section, dict) else None
            return bool(isinstance(s3, dict) and s3.get("endpoint_url"))
        return False

    def require_credentials(self, verb: str, target: str) -> None:
        if not self.has_credentials:
            raise CopyError(f"cannot {verb} {target}: {self._no_credentials()}", path=target)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def failure(self, exc: BaseException, verb: str, target: str) -> CopyError:
        """`cannot <verb> <target>: <what happened and what to do>`, with no credential in it."""
        if isinstance(exc, CopyError):
            return exc
        reason = self._reason(exc, target)
        return CopyError(self.redact(f"cannot {verb} {target}: {reason}"), path=target)

    def _no_credentials(self) -> str:
        return (
            f"no S3 credentials for this user (profile '{self.profile}'): put aws_access_key_id and "
            "aws_secret_access_key in that profile of ~/.aws/credentials, or choose a profile that has them"
        )

    def _reason(self, exc: BaseException, target: str) -> str:
        from botocore import exceptions as bx

        endpoint = getattr(self, "endpoint", "") or self.options.endpoint_url or "the S3 endpoint"
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return self._no_credentials()
        if isinstance(exc, bx.SSLError):
            return (
                f"TLS failure talking to {endpoint} ({_first_line(exc)}): if the server's certificate "
                "comes from a private CA, set ca_bundle in your ~/.aws/config profile or the site's "
                "s3.ca_bundle"
            )
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
            return (
                f"cannot reach the S3 endpoint {endpoint}: check endpoint_url (in your ~/.aws/config "
                "profile or the site's s3.endpoint_url) and that the server is up"
            )
        if isinstance(exc, bx.ReadTimeoutError):
            return f"the S3 endpoint {endpoint} stopped answering: try again later"
        if isinstance(exc, bx.ClientError):
            return self._client_reason(exc, target, endpoint)
        if isinstance(exc, OSError):
            return os.strerror(exc.errno) if exc.errno else str(exc)
        return f"{type(exc).__name__}: {_first_line(exc)}"

    def _client_reason(self, exc: Any, target: str, endpoint: str) -> str:
        error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(error.get("Code") or "")
        bucket = target[len("s3://") :].partition("/")[0] if target.startswith("s3://") else target
        if code in ("NoSuchBucket",):
            return f"bucket '{bucket}' does not exist at {endpoint}: check the bucket name and the endpoint"
        if code in ("NoSuchKey", "404"):
            return f"no such key in bucket '{bucket}': check the key (keys are case-sensitive)"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return (
                f"{endpoint} rejected the credentials of profile '{self.profile}' ({code}): check "
                "aws_access_key_id and aws_secret_access_key in ~/.aws/credentials"
            )
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return (
                f"access denied ({code}) for profile '{self.profile}': check the bucket name, ask the "
                f"owner of bucket '{bucket}' for access, or choose a profile that has it"
            )
        message = str(error.get("Message") or "")
        return f"{endpoint} answered {code or 'an error'}{': ' + message if message else ''}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
