#!/usr/bin/env bash
# Spread inflation on networks never seen (issue 16): for each held-out network N, calibrate the
# inflation of its leave-one-network-out Stage II (benchmarks/run_lono.sh, fine threshold
# calibrated) on the train frames of the other networks, then score it on N's held-out event
# with predict's defaults (mass consistency) beside the same model without inflation.
#   OMP_NUM_THREADS=1 benchmarks/run_spread.sh [network ...]     (default: all five)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NETS=("$@")
[ $# -eq 0 ] && NETS=(mrms radolan mch fmi opera)
for held in "${NETS[@]}"; do
  run=runs/lono_${held}_stage2
  $PY -m precipdiff.training.calibrate --spread --weights "$run/calibrated.safetensors" \
    --corpus stores/corpus.zarr --output "$run/spread.safetensors" --frames 12 --crop 160
  $PY benchmarks/bench_generalise.py --task downscale --networks "$held" --crop 160 \
    --rainfarm --mass-consistent --weights-new "$run/spread.safetensors" \
    --weights-shipped "$run/calibrated.safetensors" \
    --output "benchmarks/results/generalise_lono_spread_$held"
done
