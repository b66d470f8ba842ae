"""Job scripts a hostile user submits to stall slurmctld (issue 11.2), shared by tests and benchmarks."""

from __future__ import annotations

NORMAL_DIRECTIVES = (
    "#DW jobdw type=xfs capacity=10GiB name=scratch pool=dws requires=copy-offload",
    "#DW copy_in source=/lus/me/input destination=$DW_JOB_scratch/input",
    "#DW container name=copy-offload profile=copy-offload-default",
    "#DW copy_out source=$DW_JOB_scratch/output destination=/lus/me/output",
)


def normal_script() -> str:
    """A job script as users write them (the README's example)."""
    return "\n".join(["#!/bin/bash", "#SBATCH --nodes=1", *NORMAL_DIRECTIVES, "srun hostname"]) + "\n"


def flood_directives(jobdw: int = 8000, copy_in: int = 8000, bad: int = 2000) -> list[str]:
    """`jobdw` storage lines and `copy_in` lines into them, the first `bad` of which name storage the
    job does not have: with the defaults, the 0.9 MB script that took slurmctld 19-24 s and +316 MB."""
    lines = [f"#DW jobdw type=xfs capacity=1GiB name=s{i:05d} pool=dws" for i in range(jobdw)]
    for i in range(copy_in):
        storage = f"missing{i:05d}" if i < bad else f"s{i % max(jobdw, 1):05d}"
        lines.append(f"#DW copy_in source=/lus/in/{i:05d} destination=$DW_JOB_{storage}/in")
    return lines


def flood_script(jobdw: int = 8000, copy_in: int = 8000, bad: int = 2000) -> str:
    return "\n".join(["#!/bin/bash", *flood_directives(jobdw, copy_in, bad), "hostname"]) + "\n"
