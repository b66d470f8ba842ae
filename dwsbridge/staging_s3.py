"""`s3://` staging paths in copy_in/copy_out: checked where a job is submitted. The local backend moves
them (the data mover, as the job's user); real NNF cannot, so the kubernetes backend refuses them here,
before the job is queued, rather than failing at DataIn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from copyoffload.s3url import is_s3_url, parse_s3_url

if TYPE_CHECKING:
    from dwsbridge.directives import Directive
    from dwsbridge.errors import DirectiveError

STAGING = ("copy_in", "copy_out")


def s3_staging_errors(directives: Sequence[Directive], backend: str | None) -> list[DirectiveError]:
    """Problems with the s3:// arguments of `directives` on `backend` (None: only the URL's shape)."""
    errors: list[DirectiveError] = []
    for d in directives:
        if d.command not in STAGING:
            continue
        values = {arg: d.get(arg) or "" for arg in ("source", "destination")}
        urls = {arg: value for arg, value in values.items() if is_s3_url(value)}
        for arg, value in urls.items():
            if backend == "kubernetes":
                errors.append(
                    d.error(
                        f"argument '{arg}' value '{value}': the kubernetes backend cannot stage to or from "
                        "S3 (NNF data movement copies between file systems only); use the local backend, "
                        f"or copy it from inside the job with the copy-offload server (copyoffload copy "
                        f"{value} ...)",
                        arg,
                    )
                )
                continue
            try:
                parse_s3_url(value)
            except ValueError as exc:
                errors.append(d.error(f"argument '{arg}' value {exc}", arg))
        if len(urls) == 2:
            errors.append(
                d.error(
                    f"{d.command} copies between job storage and S3, not from S3 to S3: stage through "
                    "$DW_JOB_<name>",
                    "source",
                )
            )
    return errors
