"""The one typed configuration object, loaded in one place.

Sources, later wins: built-in defaults, the YAML file (`$DWSBRIDGE_CONFIG`, else
`/etc/dwsbridge/config.yaml` when present), then `$DWSBRIDGE_ROOT` for the local backend's root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwsbridge.errors import ConfigError

if TYPE_CHECKING:
    from dwsbridge.directives import Limits

DEFAULT_CONFIG_PATH = Path("/etc/dwsbridge/config.yaml")
DEFAULT_ROOT = Path("/var/lib/dwsbridge")
DEFAULT_KUBECONFIG = Path("/etc/slurm/slurm-dws.kubeconfig")


@dataclass
class Config:
    backend: str = "local"  # "local" (embedded default) or "kubernetes"
    root: Path = DEFAULT_ROOT  # local backend: state database, job storage, secrets
    ruleset: Path | None = None  # DWDirectiveRule YAML; None = the bundled NNF ruleset
    namespace: str = "default"
    kubeconfig: Path | None = None  # None = $KUBECONFIG, then DEFAULT_KUBECONFIG, then in-cluster
    pool_name: str = "dws"  # the Slurm burst-buffer pool reported by slurm_bb_pools
    pool_size: int | None = None  # bytes; None = size the pool from the local storage
    pool_granularity: int = 1
    capacity_limit: int | None = None  # bytes per workflow; None = free space only
    # local backend, persistent instances: who may use one with persistentdw ("owner", "group": the
    # same group ID, "all"), and how many instances and bytes one user may hold (None = a quarter of
    # the pool)
    persistent_sharing: str = "owner"
    persistent_instances_per_user: int = 4
    persistent_capacity_per_user: int | None = None
    persistent_default_capacity: int = 1024**3  # a create_persistent without capacity= gets this much
    # local backend: how capacity= is enforced: "loop" (an ext4 filesystem of that size per allocation,
    # loop-mounted; needs root with CAP_SYS_ADMIN and loop devices) or "none" (plain directories, the
    # capacity only accounted)
    storage_enforcement: str = "loop"
    state_timeout: float = 300.0  # seconds to wait for a state before giving up
    transient_timeout: float = 60.0  # seconds a TransientCondition may last before it is fatal
    # Slurm agent: how often to tear down workflows whose job Slurm has forgotten (0 = never)
    orphan_sweep_interval: float = 60.0
    copy_offload_cert_dir: Path | None = None  # site TLS cert+key; None = <root>/tls
    # Slurm: per-job environment files the TaskProlog exports (backends whose env is final only at
    # PreRun); None = <root>/job-env. Multi-node sites: a shared filesystem every compute node sees.
    slurm_env_dir: Path | None = None
    copy_offload_profiles: Path | None = None  # dmProfile YAML for copy-offload servers
    compute_name: str = "localhost"  # local backend: the host name jobs reach the copy-offload server by
    flux_presets: dict[str, str] = field(default_factory=dict)  # -S dw=NAME -> directives
    # copy_in/copy_out `profile=NAME` -> data mover options, e.g. {"workers": 8, "bwlimit": 104857600}
    data_movement_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What one job may ask of the validator, which runs inside slurmctld (dwsbridge.directives.Limits)
    max_directives: int = 1000  # #DW directives per job
    max_directive_bytes: int = 256 * 1024  # bytes of a job's #DW directives
    max_errors: int = 20  # problems reported per job; the rest are counted
    # s3:// staging: the site's defaults (endpoint_url, addressing_style, ca_bundle, multipart sizes,
    # max_concurrency; see copyoffload.s3options.S3Options). Never credentials: those are the user's.
    s3: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    @property
    def tls_dir(self) -> Path:
        return self.copy_offload_cert_dir or self.root / "tls"

    @property
    def job_env_dir(self) -> Path:
        return self.slurm_env_dir or self.root / "job-env"

    @property
    def directive_limits(self) -> Limits:
        from dwsbridge.directives import Limits

        return Limits(self.max_directives, self.max_directive_bytes, self.max_errors)


_PATH_FIELDS = {
    "root",
    "ruleset",
    "kubeconfig",
    "copy_offload_cert_dir",
    "copy_offload_profiles",
    "slurm_env_dir",
}


_LIMIT_FIELDS = ("max_directives", "max_directive_bytes", "max_errors")
PERSISTENT_SHARING = ("owner", "group", "all")
STORAGE_ENFORCEMENT = ("loop", "none")


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Read the config file (if any), apply environment and explicit overrides, and check types."""
    cfg_path = Path(path) if path else None
    if cfg_path is None and os.environ.get("DWSBRIDGE_CONFIG"):
        cfg_path = Path(os.environ["DWSBRIDGE_CONFIG"])
    if cfg_path is None and DEFAULT_CONFIG_PATH.exists():
        cfg_path = DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    if cfg_path is not None:
        data = _read_yaml(cfg_path)
    if os.environ.get("DWSBRIDGE_ROOT"):
        data["root"] = os.environ["DWSBRIDGE_ROOT"]
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(data, str(cfg_path) if cfg_path else "defaults")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def _build(data: dict[str, Any], source: str) -> Config:
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kwargs[key] = _coerce(key, value, source)
    cfg = Config(**kwargs)
    if cfg.backend not in ("local", "kubernetes"):
        raise ConfigError(f"{source}: backend must be 'local' or 'kubernetes', not {cfg.backend!r}")
    if cfg.storage_enforcement not in STORAGE_ENFORCEMENT:
        raise ConfigError(
            f"{source}: storage_enforcement must be one of {', '.join(STORAGE_ENFORCEMENT)},"
            f" not {cfg.storage_enforcement!r}"
        )
    if cfg.persistent_sharing not in PERSISTENT_SHARING:
        raise ConfigError(
            f"{source}: persistent_sharing must be one of {', '.join(PERSISTENT_SHARING)},"
            f" not {cfg.persistent_sharing!r}"
        )
    return cfg


def _coerce(key: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    try:
        if key in _PATH_FIELDS:
            return Path(str(value))
        if key in (
            "pool_size",
            "capacity_limit",
            "pool_granularity",
            "persistent_capacity_per_user",
            "persistent_default_capacity",
        ):
            return parse_size(value)
        if key == "persistent_instances_per_user":
            if isinstance(value, bool) or int(value) < 0:
                raise ValueError("must be a count of 0 or more")
            return int(value)
        if key in ("state_timeout", "transient_timeout", "orphan_sweep_interval"):
            return float(value)
        if key in _LIMIT_FIELDS:
            number = parse_size(value) if key == "max_directive_bytes" else value
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ValueError(f"must be a positive integer, not {value!r}")
            return number
        if key == "data_movement_profiles":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ValueError("must map each profile name to a mapping of mover options")
            return {str(k): dict(v) for k, v in value.items()}
        if key == "s3":
            return s3_settings(value)
        if key == "flux_presets":
            if not isinstance(value, dict):
                raise ValueError("must be a mapping of preset name to directives")
            return {str(k): str(v) for k, v in value.items()}
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: setting {key}: {exc}") from exc


_S3_SIZES = ("multipart_threshold", "multipart_chunksize")


def s3_settings(value: Any) -> dict[str, Any]:
    """S3 settings checked now (a typo is an error at load, ValueError), sizes in bytes; kept as a
    mapping so that loading a config without `s3` never imports anything for it."""
    from copyoffload.s3options import S3Options

    if not isinstance(value, dict):
        raise ValueError("must be a mapping of S3 settings (endpoint_url, max_concurrency, ...)")
    settings = {str(k): v for k, v in value.items()}
    for name in _S3_SIZES:
        if name in settings:
            settings[name] = parse_size(settings[name])
    S3Options.from_mapping(settings)
    return settings


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as '10GiB', '500MB' (the #DW capacity units)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    digits = len(text) - len(text.lstrip("0123456789"))
    number, unit = text[:digits], text[digits:].strip().upper()
    if not number or unit not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 10GiB, 500MB, or bytes)")
    return int(number) * _UNITS[unit]
