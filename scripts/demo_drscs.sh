#!/usr/bin/env bash
# Demo: write a synthetic lab drscs (current source) run set with three currents, run
# calib-mpi on it with MPI (currents on rank groups, collective merge) and compare the merged
# constants with the ground truth.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
np=${1:-4}
venv=${CALIB_MPI_VENV:-$here/.venv}
demo=$here/demo-drscs
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
rm -rf "$demo"
mkdir -p "$demo"
echo "[demo-drscs] writing synthetic lab drscs runs (3 currents x 4 runs x 240 trains, ~1 GB) to $demo/raw"
"$venv/bin/python" -m calib_mpi.synthetic.cfel_drscs write "$demo/raw" "$demo/drscs.conf" "$demo/results"
echo "[demo-drscs] config file $demo/drscs.conf:"
sed 's/^/    /' "$demo/drscs.conf"
echo "[demo-drscs] running: mpirun -n $np calib-mpi $demo/drscs.conf"
mpirun -n "$np" "$venv/bin/calib-mpi" "$demo/drscs.conf"
echo "[demo-drscs] comparing with the ground truth ($demo/raw/truth_cfel_drscs.h5):"
"$venv/bin/python" -m calib_mpi.synthetic.cfel_drscs check \
  "$demo/results/drscs/drscs_M304_cfel.h5" "$demo/raw/truth_cfel_drscs.h5"
echo "[demo-drscs] constants are in $demo/results/drscs/ (per current under currents/<name>/)"
