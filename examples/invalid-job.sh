#!/bin/bash
#SBATCH --nodes=1
#
# Deliberately wrong: `dwsbridge validate --wlm slurm examples/invalid-job.sh` reports every problem.
#DW jobdw type=xfs capacity=10 name=scratch
#DW jobdw type=ext4 capacity=1GiB name=Data pool=dws
#DWcopy_in source=/tmp/in destination=$DW_JOB_scratch
#DW copy_out source=$DW_JOB_missing/out destination=relative/path
#DW container name=one profile=copy-offload-default
#DW container name=two profile=copy-offload-default
#DW persistentdw name=shared color=blue

echo "never runs: sbatch refuses this script"
