"""How a copy reaches `s3://` paths: settings only, no credentials (standard library only, so the
configuration can check them on the submit path without importing the mover or boto3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

# A copy-offload server's site S3 settings (JSON) reach its copies through this variable.
S3_OPTIONS_ENV = "COPYOFFLOAD_S3_OPTIONS"
ADDRESSING_STYLES = ("auto", "path", "virtual")


@dataclass(frozen=True)
class S3Options:
    """How `s3://` paths are reached: the site's defaults, then a profile's. Credentials are never here:
    the copy finds them as the job's user (`~/.aws/credentials`, `~/.aws/config`), with `profile`
    naming one of that user's profiles ("" = boto3's default). The user's own `endpoint_url` wins over
    the site's `endpoint_url`."""

    profile: str = ""
    endpoint_url: str = ""
    region: str = ""
    addressing_style: str = "auto"
    ca_bundle: str = ""
    verify_tls: bool = True
    multipart_threshold: int = 16 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024
    max_concurrency: int = 10

    def __post_init__(self) -> None:
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"s3 addressing_style must be one of {', '.join(ADDRESSING_STYLES)}, "
                f"not {self.addressing_style!r}"
            )
        if self.multipart_chunksize < 5 * 1024 * 1024:
            raise ValueError(
                f"s3 multipart_chunksize must be at least 5 MiB (S3's smallest part), "
                f"not {self.multipart_chunksize}"
            )
        if self.multipart_threshold < 1:
            raise ValueError(f"s3 multipart_threshold must be positive, not {self.multipart_threshold}")
        if not 1 <= self.max_concurrency <= 64:
            raise ValueError(f"s3 max_concurrency must be between 1 and 64, not {self.max_concurrency}")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(
                f"s3 endpoint_url must start with http:// or https://, not {self.endpoint_url!r}"
            )

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], base: S3Options | None = None) -> S3Options:
        """`base` (default: built-in defaults) with `data`'s settings; unknown names are an error."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown s3 setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        values = (base or cls()).to_dict()
        for name, value in data.items():
            default = values[name]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"s3 {name} must be true or false, not {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"s3 {name} must be a whole number, not {value!r}")
            elif not isinstance(value, str):
                raise ValueError(f"s3 {name} must be a string, not {value!r}")
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]
