#!/bin/bash
# One allocation, one Ray cluster (a head and a worker on every other node), one driver:
#   sbatch --export=ALL,INPUT=/shared/in/proteins.faa.gz,OUT=/shared/out/run1 ray_cluster.sh
# See docs/CLUSTER.md ("Slurm with Ray") for what each line is for.
#SBATCH --job-name=virnucpro-ray
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=virnucpro-ray-%j.log
set -euo pipefail

: "${INPUT:?set INPUT: the FASTA/FASTQ file to embed}"
: "${OUT:?set OUT: the output directory, on storage every node mounts}"
MODEL=${MODEL:-esm2_t36_3B_UR50D}
VIRNUCPRO=${VIRNUCPRO:-virnucpro}
PYTHON=${PYTHON:-python3}
GPUS=${GPUS:-${SLURM_GPUS_PER_NODE:-4}}
CPUS=${SLURM_CPUS_PER_TASK:-1}
# Ray's sockets, logs and object store spill: node-local and SHORT (socket paths <= 107 bytes).
export VIRNUCPRO_RAY_TMPDIR=${VIRNUCPRO_RAY_TMPDIR:-/tmp/ray-$SLURM_JOB_ID}
# Only this job can talk to its cluster (srun passes the environment to every node).
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$($PYTHON -c 'import secrets; print(secrets.token_hex(32))')}
export RAY_USAGE_STATS_ENABLED=0
# Models: pre-staged on shared storage (docs/CLUSTER.md, "Models without internet"), e.g.
# export VIRNUCPRO_MODELS=/shared/virnucpro-models   # or HF_HOME=/shared/cache/huggingface

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=${RAY_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
address=$head_ip:$port

# When this script ends, Slurm stops the `ray start --block` steps; each stops its Ray node.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
srun --nodes=1 --ntasks=1 -w "$head" \
    ray start --head --block --node-ip-address="$head_ip" --port="$port" \
    --num-cpus="$CPUS" --num-gpus="$GPUS" \
    --temp-dir="$VIRNUCPRO_RAY_TMPDIR" --include-dashboard=false &
for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --block --address="$address" --num-cpus="$CPUS" --num-gpus="$GPUS" &
done
# Wait (up to 10 minutes) until the head answers and every node has joined.
$PYTHON - "$address" "${#nodes[@]}" <<'PY'
import sys, time

import ray

address, wanted = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 600
while True:
    try:
        ray.init(address=address, log_to_driver=False)
        break
    except Exception:  # the head is not up yet
        if time.monotonic() > deadline:
            raise
        time.sleep(2)
while sum(n["Alive"] for n in ray.nodes()) < wanted:
    if time.monotonic() > deadline:
        sys.exit(f"only {sum(n['Alive'] for n in ray.nodes())} of {wanted} Ray nodes joined")
    time.sleep(2)
PY

$VIRNUCPRO embed "$INPUT" -o "$OUT" --model "$MODEL" \
    --backend ray --ray-address "$address" --devices auto ${EMBED_ARGS:-}
