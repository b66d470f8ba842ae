"""One table of invalid #DW cases, shared by the Slurm and the Flux paths: both must refuse each job
with the same text. Each row: (the job's directives, a substring of the message).

jobdw lines carry `pool=dws` because Slurm itself requires it beside capacity=; DWS never sees it.
"""

from __future__ import annotations

JOB = "#DW jobdw type=xfs capacity=1GiB name=data pool=dws"

INVALID_CASES: list[tuple[list[str], str]] = [
    (["#DW jobdw type=bogus capacity=1GiB name=data pool=dws"], "argument 'type' value 'bogus'"),
    (["#DW jobdw type=xfs capacity=1GiB name=data name=other pool=dws"], "repeated argument 'name'"),
    (["#DW jobdw type=xfs capacity=lots name=data pool=dws"], "argument 'capacity' value 'lots'"),
    (["#DW jobdw type=xfs capacity=1GiB name=Data pool=dws"], "argument 'name' value 'Data'"),
    (["#DW jobdw type=xfs capacity=1GiB pool=dws"], "missing required argument 'name'"),
    ([JOB + " flavour=mint"], "unsupported argument 'flavour'"),
    ([JOB + " requires=bogus"], "argument 'requires' item 'bogus'"),
    (["#DW bogus_command x=y"], "unknown command 'bogus_command'"),
    (["#DW copy_in source=/tmp/a destination=$DW_JOB_missing/"], "names jobdw storage 'missing'"),
    (["#DW copy_out source=relative/path destination=/tmp/x"], "must be $DW_JOB_<name>"),
    ([JOB, "#DW jobdw type=raw capacity=1GiB name=data pool=dws"], "must be unique within a job"),
    (
        [
            "#DW jobdw type=raw capacity=1GiB name=data pool=dws",
            "#DW copy_in source=/a destination=$DW_JOB_data/",
        ],
        "cannot use raw job storage 'data'",
    ),
    (
        ["#DW create_persistent type=xfs capacity=1GiB name=pers pool=dws", JOB],
        "create_persistent must be the only directive",
    ),
    (
        [
            "#DW container name=c1 profile=copy-offload-default",
            "#DW container name=c2 profile=copy-offload-default",
        ],
        "only one container directive",
    ),
]

# Lines that are not "#DW <command>": Flux's attribute splitting (split_flux, as flux-coral2 splits on
# "#DW ") re-prefixes them, so the Flux text names a different problem than the Slurm text.
MALFORMED_PREFIX_CASES: list[tuple[list[str], str]] = [
    (["#DW"], "no command after '#DW'"),
    (["#DWjobdw type=xfs capacity=1GiB name=data pool=dws"], "'#DWjobdw' is not '#DW'"),
]
