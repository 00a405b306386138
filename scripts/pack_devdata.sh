#!/usr/bin/env bash
# The data files a machine without network access needs for scripts/device_run.sh: every file of
# the named data sets (default: those of the experiment grids), verified, into .devdata/
# (git-ignored), with the commit they go with (.devdata/COMMIT, DIRTY: the copied tree's .git,
# if any, can be stale). Where the machine accepts a copy of limited size (CARRY_MIB, default
# 64), the tracked tree and .devdata together must stay under it: as results/ grows, name fewer
# data sets per job (scripts/device_grid.py skips the sets whose files are absent).
#
#   bash scripts/pack_devdata.sh                   # the grids' data sets
#   bash scripts/pack_devdata.sh HW Scene-15       # these only
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY_MIB=${CARRY_MIB:-64}
if [ $# -eq 0 ]; then
    set -- MNIST-USPS BDGP Fashion Hdigit Prokaryotic Synthetic3d Scene-15 LandUse-21 HW \
        Reuters-1200 CCV
fi
PY=${PYTHON:-.venv/bin/python}
rm -rf .devdata && mkdir -p .devdata
"$PY" -c "import sys; from cmmc.data import copy_data_files; copy_data_files('.devdata', sys.argv[1:])" "$@"
git rev-parse HEAD >.devdata/COMMIT
if git diff --quiet HEAD -- cmmc; then echo 0 >.devdata/DIRTY; else echo 1 >.devdata/DIRTY; fi
du -sh .devdata
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
data=$(du -sb .devdata | cut -f1)
total=$(((tree + data) / 1048576))
echo "copy: tracked tree + .devdata = $total MiB of $CARRY_MIB MiB"
if [ "$total" -ge $((CARRY_MIB - 1)) ]; then
    echo "too big: name fewer data sets" >&2
    exit 1
fi
