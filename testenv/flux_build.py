"""A real flux-core for the tests (DESIGN Part 8): an installed Flux, or one built from its release tarball
into a cache outside the clone and reused from then on.

Where it comes from, first match wins:

- `FLUX_PREFIX=DIR`: an installed flux-core (`DIR/bin/flux`); nothing is built.
- `<cache>/flux-core-<version>` with `DWSB_FLUX_CACHE` (default /var/cache/dwsbridge): reused when its
  `bin/flux version` names the version; else built there from `DWSB_FLUX_TARBALL` (default
  `../shared/vendor/flux-core-0.88.0.tar.gz` beside the clone).

`python -m testenv.flux_build` builds it (run by `make install` as root); `--check` only reports.
Exit status: 0 a Flux is available, 1 the build failed, 3 neither a Flux nor a tarball was found.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "0.88.0"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/var/cache/dwsbridge")
DEFAULT_TARBALL = REPO.parent / "shared" / "vendor" / f"flux-core-{VERSION}.tar.gz"
# The Debian packages the build needs are installed by the Makefile (FLUX_DEBS).
HOW_TO_PROVIDE = (
    f"no Flux here: set FLUX_PREFIX to an installed flux-core, or put flux-core-{VERSION}.tar.gz at"
    f" {DEFAULT_TARBALL} (or DWSB_FLUX_TARBALL) and run `make install` as root"
)


def cache_dir() -> Path:
    return Path(os.environ.get("DWSB_FLUX_CACHE") or DEFAULT_CACHE)


def tarball() -> Path:
    return Path(os.environ.get("DWSB_FLUX_TARBALL") or DEFAULT_TARBALL)


def build_prefix() -> Path:
    return cache_dir() / f"flux-core-{VERSION}"


def version_of(prefix: Path) -> str | None:
    """The version `PREFIX/bin/flux version` reports, or None when there is no working Flux there."""
    flux = prefix / "bin" / "flux"
    if not flux.is_file():
        return None
    try:
        out = subprocess.run([str(flux), "version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "commands":
            return value.strip()
    return None


def find_prefix() -> Path | None:
    """A usable Flux prefix without building anything: FLUX_PREFIX, else a finished cached build."""
    given = os.environ.get("FLUX_PREFIX")
    if given:
        return Path(given) if version_of(Path(given)) else None
    prefix = build_prefix()
    return prefix if version_of(prefix) == VERSION else None


def build(log: Path | None = None) -> Path:
    """Build flux-core from the tarball into the cache (serialised by a lock; reused when present)."""
    found = find_prefix()
    if found is not None:
        return found
    if os.environ.get("FLUX_PREFIX"):
        raise RuntimeError(f"FLUX_PREFIX={os.environ['FLUX_PREFIX']} has no working bin/flux")
    source = tarball()
    if not source.is_file():
        raise FileNotFoundError(HOW_TO_PROVIDE)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = log or cache / f"flux-core-{VERSION}-build.log"
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if version_of(build_prefix()) == VERSION:  # another process built it while we waited
            return build_prefix()
        work = cache / f"build-{VERSION}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        subprocess.run(["tar", "-xzf", str(source), "-C", str(work)], check=True)
        src = work / f"flux-core-{VERSION}"
        steps = [
            ["./configure", f"--prefix={build_prefix()}", "--disable-docs", "PYTHON=/usr/bin/python3"],
            ["make", f"-j{os.cpu_count() or 2}"],
            ["make", "install"],
        ]
        with open(log, "w") as out:
            for step in steps:
                print(f"flux-core {VERSION}: {' '.join(step)} (log: {log})", file=sys.stderr, flush=True)
                done = subprocess.run(step, cwd=src, stdout=out, stderr=subprocess.STDOUT, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"flux-core build step `{' '.join(step)}` failed; see {log}")
        shutil.rmtree(work, ignore_errors=True)
    if version_of(build_prefix()) != VERSION:
        raise RuntimeError(f"flux-core built into {build_prefix()} but `flux version` does not say {VERSION}")
    return build_prefix()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testenv.flux_build",
        description="Find or build the real flux-core the Flux tests run on.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="only report; build nothing")
    args = parser.parse_args(argv)
    if args.check:
        found = find_prefix()
        print(found if found else HOW_TO_PROVIDE)
        return 0 if found else 3
    try:
        print(build())
    except FileNotFoundError as exc:
        print(f"flux_build: {exc}", file=sys.stderr)
        return 3
    except RuntimeError as exc:
        print(f"flux_build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
