#!/usr/bin/env bash
# One job on a GPU machine that receives a copy of the tree: continue the experiment grids, pack
# the new records to bring back. For machines without network access or a usable .git, where a
# job runs under a wall-time limit (as on a batch scheduler):
#
#   before: bash scripts/pack_devdata.sh      # data files + .devdata/COMMIT (the commit copied:
#                                               the copy's .git, if any, can be stale)
#   job:    bash scripts/device_run.sh 580    # from the copied tree's root, .devdata beside it
#   after:  tar xzf $OUT/results.tar.gz       # the records land in results/; commit them
#
# The argument is the deadline: seconds this job may run (a little under its wall-time limit); a
# batch starts only if the records of earlier jobs say it ends in time. Up to WORKERS (default 4)
# batches of up to BATCH (default 10) seeds/temperatures, MEMBERS (default 40) runs in all, share
# the GPU. NO_CHECK=1: no determinism re-run (one per grid is enough). MPS=1: see below.
set -u
DEADLINE=${1:-580}
export CMMC_DATA_DIR=$PWD/.devdata PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
CMMC_GIT_COMMIT=$(cat .devdata/COMMIT 2>/dev/null || true)
CMMC_GIT_DIRTY=$(cat .devdata/DIRTY 2>/dev/null || echo 0)
export CMMC_GIT_COMMIT CMMC_GIT_DIRTY
OUT=${OUT:-device_out}
mkdir -p "$OUT"
nvidia-smi -L
# GPU load every 5 s: says afterwards whether the GPU or the CPUs were the limit.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$OUT/gpu_util.csv" &
# MPS=1: run the batches' kernels side by side through CUDA MPS (a user-space daemon; the
# GPU's settings are untouched). Without MPS the processes time-slice the GPU, and small kernels
# leave most of it idle. If the daemon does not start, CUDA runs as usual, without it.
if [ "${MPS:-0}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d && sleep 1; then
        trap 'echo quit | nvidia-cuda-mps-control; cp "$CUDA_MPS_LOG_DIRECTORY/control.log" "$OUT/mps_control.log"' EXIT
        # a client that reaches the daemon but gets no server fails: probe once, else go without
        if timeout 120 python3 -c "import torch; torch.ones(8, device='cuda').sum().item()"; then
            export CMMC_GPU_SHARING=mps  # recorded in each record's environment
        else
            echo quit | nvidia-cuda-mps-control
            unset CUDA_MPS_PIPE_DIRECTORY
        fi
    fi
fi
echo "GPU sharing: ${CMMC_GPU_SHARING:-time-sliced}"
# VERIFY="results/...json ...": recompute these records (a batched one with its batch) beside the
# grid and compare (cmmc verify); the verdicts come back in $OUT/verify.jsonl.
if [ -n "${VERIFY:-}" ]; then
    python3 -m cmmc.cli verify $VERIFY --scratch /tmp/cmmc_verify >"$OUT/verify.jsonl" 2>"$OUT/verify.err" &
fi
python3 scripts/device_grid.py --device cuda --workers "${WORKERS:-4}" --batch "${BATCH:-10}" \
    --members "${MEMBERS:-40}" --deadline "$DEADLINE" --out "$OUT" ${NO_CHECK:+--no-check} \
    --extra-load "$([ -n "${VERIFY:-}" ] && echo 1 || echo 0)" \
    ${EXPERIMENTS:+--experiments $EXPERIMENTS} 2>&1 | tee "$OUT/stdout.log" | grep -v -i warning
