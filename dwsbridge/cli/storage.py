"""`dwsbridge persistent`: the local backend's persistent storage instances and each user's usage,
against the per-user limits (issue 11.7)."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  dwsbridge persistent              a table: name, owner, capacity, state; then usage per user
  dwsbridge persistent --json       the same for scripts

Limits per user: persistent_instances_per_user and persistent_capacity_per_user (config file).
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "persistent",
        help="list persistent storage instances and each user's usage (local backend)",
        description="Persistent storage instances (create_persistent) and, per user, how many instances "
        "and bytes they hold against the site's limits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_persistent)


def cmd_persistent(args: argparse.Namespace) -> int:
    import json

    from dwsbridge.config import load_config
    from dwsbridge.errors import ConfigError
    from dwsbridge.lifecycle import make_backend

    config = load_config(args.config)
    if config.backend != "local":
        raise ConfigError("dwsbridge persistent reads the local backend; with DWS use kubectl")
    backend: Any = make_backend(config)
    instances = backend.persistent_instances()
    usage = backend.persistent_usage()
    limit = config.persistent_capacity_per_user
    if limit is None:
        limit = backend.driver.pool_bytes() // 4
    users = [
        {
            "uid": uid,
            "instances": count,
            "bytes": held,
            "max_instances": config.persistent_instances_per_user,
            "max_bytes": limit,
        }
        for uid, (count, held) in sorted(usage.items())
    ]
    if args.json:
        keys = ("name", "uid", "gid", "capacity", "state", "path", "workflow")
        print(
            json.dumps({"instances": [{k: i[k] for k in keys} for i in instances], "users": users}, indent=2)
        )
        return 0
    print(f"{'NAME':<24} {'UID':>7} {'CAPACITY':>14} {'STATE':<10} PATH")
    for i in instances:
        print(f"{i['name']:<24} {i['uid']:>7} {i['capacity']:>14} {i['state']:<10} {i['path']}")
    print(f"\n{'UID':>7} {'INSTANCES':>9} {'BYTES':>14} {'LIMITS':>24}")
    for u in users:
        limits = f"{u['max_instances']} / {u['max_bytes']}"
        print(f"{u['uid']:>7} {u['instances']:>9} {u['bytes']:>14} {limits:>24}")
    return 0
