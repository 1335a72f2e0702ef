#!/usr/bin/env bash
# One pipeline stage as its own Slurm batch job (the paper's "batch" baseline):
#   bash benchmarks/slurm_stage.sh RANKS python paper_job.py ...
# sbatch --wait submits it, srun starts RANKS ranks spread over RCYLON_BENCH_NODES nodes (default 2)
# with a PMI; the job's output is shown only when it fails.
set -euo pipefail
ranks=$1
shift
nodes=${RCYLON_BENCH_NODES:-2}
out=$(mktemp "${TMPDIR:-/tmp}/rcylon-stage-XXXXXX.out")
trap 'rm -f "$out"' EXIT
cmd=$(printf '%q ' "$@")
if ! sbatch --wait --quiet --nodes="$nodes" --ntasks="$ranks" --exclusive --output="$out" \
        --wrap "srun --mpi=pmi2 $cmd"; then
    cat "$out" >&2
    exit 1
fi
