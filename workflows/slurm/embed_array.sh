#!/bin/bash
# One task of a job array: shard I of N of `virnucpro embed`, I = SLURM_ARRAY_TASK_ID (0-based).
# Submit with submit.sh (which adds the merge), or:
#   sbatch --export=ALL,INPUT=/shared/in/proteins.faa.gz,OUT=/shared/out/run1 embed_array.sh
# N is the number of array tasks: change --array (keep it 0-based) and nothing else.
#SBATCH --job-name=virnucpro-embed
#SBATCH --array=0-15
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=virnucpro-embed-%A_%a.log
set -euo pipefail

: "${INPUT:?set INPUT: the FASTA/FASTQ file to embed}"
: "${OUT:?set OUT: the output directory, on storage every node mounts}"
MODEL=${MODEL:-esm2_t36_3B_UR50D}       # or a folder / .pt on shared storage (offline nodes)
VIRNUCPRO=${VIRNUCPRO:-virnucpro}
SHARDS=${SLURM_ARRAY_TASK_COUNT:?run as a job array (sbatch --array=0-N)}

# Exit 2 means a partial shard (poison sequences, listed at merge in failed.tsv): the task
# fails so that you see it; re-running the same task resumes from its committed units.
$VIRNUCPRO embed "$INPUT" -o "$OUT" --model "$MODEL" \
    --shard "$SLURM_ARRAY_TASK_ID/$SHARDS" --devices auto ${EMBED_ARGS:-}
