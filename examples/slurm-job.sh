#!/bin/bash
#SBATCH --job-name=dws-copy-offload
#SBATCH --nodes=1
#SBATCH --time=00:10:00
#
# A Slurm job with node-local burst-buffer storage from DataWorkflowServices.
#   jobdw      10 GiB of XFS job storage named "scratch"; pool= is for Slurm (the bridge removes it),
#              requires=copy-offload gives the job a token for the copy-offload server
#   copy_in    staged into the job storage before the job starts ($DW_JOB_scratch is written unexpanded)
#   container  the copy-offload server the job can ask to move data while it runs
#   copy_out   staged back out after the job ends
# Check it with:  dwsbridge validate --wlm slurm examples/slurm-job.sh
#
#DW jobdw type=xfs capacity=10GiB name=scratch requires=copy-offload pool=dws
#DW copy_in source=/tmp/dws-example/input destination=$DW_JOB_scratch/input
#DW container name=copy-offload profile=copy-offload-default
#DW copy_out source=$DW_JOB_scratch/output destination=/tmp/dws-example/output

set -eu
echo "job storage: $DW_JOB_scratch"
mkdir -p "$DW_JOB_scratch/output"
if [ -d "$DW_JOB_scratch/input" ]; then
    cp -r "$DW_JOB_scratch/input/." "$DW_JOB_scratch/output/"
fi
date > "$DW_JOB_scratch/output/finished-at"
