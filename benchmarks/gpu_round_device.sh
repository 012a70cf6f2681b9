#!/usr/bin/env bash
# The lent GPU machine's side of a training round that benchmarks/prepare_gpu_round.py prepared (it prints the calls).
# Run from the repository root:
#   bash benchmarks/gpu_round_device.sh piece NN                   piece NN arrived intact (kept for the last call)
#   bash benchmarks/gpu_round_device.sh train RECIPE MINUTES NN    join pieces 01..NN, install, train into $OUT/round
#   bash benchmarks/gpu_round_device.sh unpack NN                  join and unpack pieces 01..NN
#   bash benchmarks/gpu_round_device.sh check RECIPE NN            rehearsal on any machine: unpack, find the cached
#                                                                  mixture (no install, no training)
# TRAIN_ARGS: more arguments for train_default_model_gpu.py (a CPU rehearsal of `train`: --allow-cpu --probe 1 --skip 0,
# with a stub nvidia-smi on PATH).
set -euo pipefail
round=runs/gpu_round

verify_piece() { sha256sum --quiet -c "$round/call$1/part.sha256" && echo "piece $1: intact"; }

unpack() {  # $1: the last piece's number
    local pieces=() number
    for number in $(seq 1 "$((10#$1))"); do
        verify_piece "$(printf %02d "$number")"
        pieces+=("$round/call$(printf %02d "$number")/part")
    done
    cat "${pieces[@]}" > "$round/payload.tar"
    sha256sum --quiet -c "$round/call$1/payload.sha256"
    tar -xf "$round/payload.tar" && rm "$round/payload.tar"
    echo "unpacked: $(ls "$round/whl" | wc -l) wheels, $(du -sh "$round/data" | cut -f1) of data"
}

find_mixture() {  # $1: recipe
    LLAMO_DATA_CACHE="$round/data/cache" python3 - "$1" <<'EOF'
import sys
from llamo.training.data import mixture_cache
from llamo.training.pipeline import load_pipeline, stage2_rounds

config = load_pipeline(sys.argv[1], {"chebi20": "runs/gpu_round/data/chebi20.txt", "work_dir": "runs/gpu_round/data/work"})
for arguments in stage2_rounds(config):
    cached = mixture_cache(arguments)
    if not (cached / "llamo_reports.json").is_file():
        sys.exit(f"no cached mixture at {cached}: the data moved or changed since it was prepared")
    print(f"cached mixture found: {cached}")
EOF
}

case "${1:-}" in
piece)
    verify_piece "$2"
    ;;
unpack)
    unpack "$2"
    ;;
check)
    unpack "$3"
    find_mixture "$2"
    ;;
train)
    recipe=$2 minutes=$3
    nvidia-smi -L
    unpack "$4"
    site="$PWD/$round/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$round"/whl/*.whl
    python3 -m pip install -q --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$site" .
    export PYTHONPATH="$site" HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0 PYTHONUNBUFFERED=1
    python3 -c "import llamo, rdkit, trl, datasets, transformers; print('transformers', transformers.__version__, 'trl', trl.__version__)"
    find_mixture "$recipe"
    mkdir -p "$OUT/round"
    LLAMO_DATA_CACHE="$round/data/cache" python3 benchmarks/train_default_model_gpu.py --recipe "$recipe" \
        --chebi20 "$round/data/chebi20.txt" --work-dir "$round/data/work" --minutes "$minutes" --output "$OUT/round" \
        ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/round/log.txt" | grep -v "it/s\]$" | tail -n 60
    ;;
*)
    sed -n 2,10p "$0"
    exit 2
    ;;
esac
