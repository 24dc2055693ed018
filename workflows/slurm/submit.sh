#!/bin/bash
# Submit the embedding array and, after it (whatever its tasks' exit status), the merge:
#   INPUT=/shared/in/proteins.faa.gz OUT=/shared/out/run1 bash workflows/slurm/submit.sh
set -euo pipefail

: "${INPUT:?set INPUT}" "${OUT:?set OUT}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
array=$(sbatch --parsable --export=ALL "$here/embed_array.sh")
sbatch --dependency="afterany:${array%%;*}" --export=ALL "$here/merge.sh"
