#!/usr/bin/env bash
# Leave-one-network-out Stage II (issue 16): for each held-out network N, train the default
# Stage II's recipe (configs/lono_fmi_stage2.yaml) on the other corpus networks, calibrate its
# fine wet/dry threshold on the train frames of those networks only, and score it on N's held-out
# event beside the shipped default Stage II (which saw N's train events) and the baselines.
#   OMP_NUM_THREADS=1 benchmarks/run_lono.sh [network ...]     (default: all five; ~40 min each)
# A network whose run already has weights is not retrained; its scores are recomputed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ALL=(mrms radolan mch fmi opera)
NETS=("$@")
[ $# -eq 0 ] && NETS=("${ALL[@]}")
SHIPPED=$($PY -c "from precipdiff.pipeline.shipped import shipped_weights; print(shipped_weights()['downscale_full'])")
for held in "${NETS[@]}"; do
  rest=$(printf '%s\n' "${ALL[@]}" | grep -vx "$held" | paste -sd, -)
  run=runs/lono_${held}_stage2
  if [ ! -f "$run/weights.safetensors" ]; then
    precipdiff train --config configs/lono_fmi_stage2.yaml \
      --set "data.networks=[$rest]" --set "train.out_dir=$run"
  fi
  $PY -m precipdiff.training.calibrate --weights "$run/weights.safetensors" \
    --corpus stores/corpus.zarr --output "$run/calibrated.safetensors" --frames 12 --crop 160
  $PY benchmarks/bench_generalise.py --task downscale --networks "$held" --crop 160 --rainfarm \
    --weights-new "$run/calibrated.safetensors" --weights-shipped "$SHIPPED" \
    --output "benchmarks/results/generalise_lono_$held"
done
