#!/usr/bin/env bash
# make demo: a real #DW job through a real Slurm with copy-offload, on the embedded (local) backend.
#
#   1. brings up the single-node test cluster (testenv/slurm-cluster) with our burst_buffer.lua,
#   2. submits a job script as an ordinary user: jobdw + copy_in + copy_out + requires=copy-offload +
#      a copy-offload container; inside, the job uses the copyoffload client to copy a file,
#   3. shows `scontrol show bbstat workflow <id>` while it runs, the job's output (its DW_* environment
#      and staged data) and the staged-out result, then stops the cluster.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
CLUSTER=$REPO/testenv/slurm-cluster
JOBUSER=${DWSB_SLURM_USER:-dwsbuser}
DEMO=${DWSB_DEMO_DIR:-/tmp/dwsb-demo}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "make demo runs a real Slurm: run it as root" >&2; exit 1; }
trap '"$CLUSTER" stop >/dev/null 2>&1 || true' EXIT

say "starting the single-node Slurm cluster with dwsbridge's burst_buffer/lua plugin"
"$CLUSTER" start
eval "$("$CLUSTER" env)"
scontrol show burst | sed -n '1,4p'

say "preparing the user's data in $DEMO (owned by $JOBUSER)"
rm -rf "$DEMO"
mkdir -p "$DEMO/input" "$DEMO/output" "$DEMO/lib"
head -c 1048576 /dev/urandom > "$DEMO/input/data.bin"
echo "hello from the input side" > "$DEMO/input/readme.txt"
# The job runs the copyoffload client (standard library only) as the user, with Debian's python3.
cp -r "$REPO/copyoffload" "$DEMO/lib/"
find "$DEMO/lib" -name __pycache__ -prune -exec rm -rf {} +
chown -R "$JOBUSER:" "$DEMO"
chmod -R a+rX "$DEMO/lib"

cat > "$DEMO/job.sh" <<JOB
#!/bin/bash
#SBATCH --job-name=dws-demo
#SBATCH --output=$DEMO/job.out
#DW jobdw type=xfs capacity=1GiB name=scratch requires=copy-offload pool=dws
#DW copy_in source=$DEMO/input destination=\$DW_JOB_scratch/
#DW container name=copy-offload profile=copy-offload-default
#DW copy_out source=\$DW_JOB_scratch/results destination=$DEMO/output/
set -eu
echo "--- the job's DW environment"
env | grep -E '^(DW_|NNF_CONTAINER_|COPY_OFFLOAD_)' | sed -E 's/^(DW_WORKFLOW_TOKEN=.{24}).*/\1.../' | sort
echo "--- staged in:"
ls -l "\$DW_JOB_scratch/input"
mkdir "\$DW_JOB_scratch/results"
sha256sum "\$DW_JOB_scratch/input/data.bin" | awk '{print \$1}' > "\$DW_JOB_scratch/results/checksum.txt"
echo "--- asking the copy-offload server to copy a file while the job runs"
export PYTHONPATH=$DEMO/lib
/usr/bin/python3 -m copyoffload.cli copy "\$DW_JOB_scratch/input/data.bin" "\$DW_JOB_scratch/results/offloaded.bin" --wait
cmp "\$DW_JOB_scratch/input/data.bin" "\$DW_JOB_scratch/results/offloaded.bin" && echo "offloaded copy matches"
sleep 3
echo "job done"
JOB
chown "$JOBUSER:" "$DEMO/job.sh"

say "the script, as dwsbridge validate sees it"
"$REPO/.venv/bin/dwsbridge" validate --wlm slurm "$DEMO/job.sh"

say "sbatch (as $JOBUSER)"
jobid=$(runuser -u "$JOBUSER" -- sbatch --parsable "$DEMO/job.sh")
echo "submitted job $jobid"

say "scontrol show bbstat workflow $jobid, while the job runs"
last=""
for _ in $(seq 600); do
  state=$(squeue -h -j "$jobid" -o %T 2>/dev/null || true)
  [ -n "$state" ] || break
  now="$(scontrol show bbstat workflow "$jobid" 2>/dev/null | tr -d '\n') [$state]"
  [ "$now" != "$last" ] && echo "$now" && last=$now
  sleep 0.2
done
sacct_state=$(scontrol show job "$jobid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' || echo "JobState=(gone)")
echo "job $jobid finished: $sacct_state"

say "the job's output"
cat "$DEMO/job.out"

say "staged out to $DEMO/output"
ls -l "$DEMO/output/results"
expected=$(sha256sum "$DEMO/input/data.bin" | awk '{print $1}')
if [ "$(cat "$DEMO/output/results/checksum.txt")" = "$expected" ] && cmp -s "$DEMO/input/data.bin" "$DEMO/output/results/offloaded.bin"; then
  echo "staged-out results match the input"
else
  echo "staged-out results do NOT match" >&2; exit 1
fi

say "workflows left on the cluster (none expected)"
"$REPO/.venv/bin/dwsbridge" status
