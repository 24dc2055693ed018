#!/bin/bash
# Merge the shards of embed_array.sh into OUT/embeddings.h5 (names the shards still missing).
#SBATCH --job-name=virnucpro-merge
#SBATCH --cpus-per-task=2
#SBATCH --time=2:00:00
#SBATCH --output=virnucpro-merge-%j.log
set -euo pipefail

: "${OUT:?set OUT: the output directory of the embedding array}"
VIRNUCPRO=${VIRNUCPRO:-virnucpro}

$VIRNUCPRO merge "$OUT"
