#!/usr/bin/env bash
# One call on a lent GPU machine: continue the experiment grids, bring the records back.
#
#   here:   make devdata                      # right before the call: data files + .devdata/COMMIT
#                                               (the copy's .git on the device can be stale)
#   device: run(command="bash scripts/device_run.sh 580", carry=[".devdata"], timeout_s=600)
#   here:   tar xzf <files_at>/results.tar.gz # then commit results/
#
# The argument is the deadline: seconds this call may run (a little under the call's timeout); a
# batch starts only if the records of earlier calls say it ends in time. Up to WORKERS (default 4)
# batches of up to BATCH (default 10) seeds/temperatures, MEMBERS (default 40) runs in all, share
# the GPU. NO_CHECK=1: no determinism re-run (one per session is enough). MPS=1: see below.
set -u
DEADLINE=${1:-580}
export CMMC_DATA_DIR=$PWD/.devdata PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
CMMC_GIT_COMMIT=$(cat .devdata/COMMIT 2>/dev/null || true)
CMMC_GIT_DIRTY=$(cat .devdata/DIRTY 2>/dev/null || echo 0)
export CMMC_GIT_COMMIT CMMC_GIT_DIRTY
OUT=${OUT:-device_out}
mkdir -p "$OUT"
nvidia-smi -L
# GPU load every 5 s: tells the next session whether the GPU or the CPUs were the limit.
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
