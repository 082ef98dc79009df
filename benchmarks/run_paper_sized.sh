#!/usr/bin/env bash
# The paper-sized classification benchmark (issue #7) in one command, for a machine with many
# cores and a GPU: 88 patients, 3 sites, `realistic`, full size, seed 2026, 5 patient-level
# folds, every method. Results (md, tsv, ROC/PR plots, predictions, log) go to "$OUT/results".
#
#   OUT=/some/folder bash benchmarks/run_paper_sized.sh                 # the real run
#   OUT=/tmp/dry bash benchmarks/run_paper_sized.sh --subjects 6 --folds 2 --size small   # a dry run
#
# Extra arguments are passed on to benchmarks/classification.py (a later option wins).
# Environment: OUT (required), PYTHON (default python3), JOBS (default: all CPUs), BUDGET
# (seconds before training stops and the unfinished methods are named; default 540),
# WORK (cohort and participant outputs; default $TMPDIR/bids_rim_paper_bench, reused when
# present), BIDS_RIM_COMMIT (the commit, where the tree has no .git).
# Exit code: that of the benchmark (0 all methods, 3 results written without some methods).
set -euo pipefail

: "${OUT:?set OUT to the folder that receives results/}"
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
BUDGET=${BUDGET:-540}
WORK=${WORK:-${TMPDIR:-/tmp}/bids_rim_paper_bench}
RESULTS="$OUT/results"
cd "$(dirname "$0")/.."
mkdir -p "$RESULTS" "$WORK"

log() { printf '%s [run_paper_sized] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$RESULTS/run.log"; }

log "start; $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
if command -v nvidia-smi >/dev/null 2>&1; then
    log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
else
    log "GPU: none visible (nvidia-smi absent); training runs where --device auto lands"
fi
"$PYTHON" -c 'import torch, bids_rim; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "bids_rim", bids_rim.__version__)' \
    | while read -r line; do log "$line"; done

started=$(date +%s)
set +e
OMP_NUM_THREADS=1 MPLBACKEND=Agg "$PYTHON" benchmarks/classification.py \
    --subjects 88 --sites 3 --size full --seed 2026 --folds 5 \
    --jobs "$JOBS" --nprocs "$JOBS" --threads 1 --device auto --time-budget "$BUDGET" \
    --out "$RESULTS" --work "$WORK" "$@" 2>&1 | tee -a "$RESULTS/run.log"
code=${PIPESTATUS[0]}
set -e
log "benchmark exit code $code after $(( $(date +%s) - started )) s"
for name in classification.md classification.tsv classification_predictions.tsv classification_roc.png classification_pr.png; do
    if [[ -s "$RESULTS/$name" ]]; then log "wrote $RESULTS/$name"; else log "MISSING $RESULTS/$name"; fi
done
[[ -s "$RESULTS/classification.md" ]] && grep -E '^\| (stage|cohort|participant|patches|training)|Not finished|FAILED' \
    "$RESULTS/classification.md" | while read -r line; do log "$line"; done
exit "$code"
