#!/usr/bin/env bash
# Demo: write a small synthetic European XFEL dark run set, run calib-mpi on it with MPI,
# and compare the constants with the ground truth.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
np=${1:-4}
venv=${CALIB_MPI_VENV:-$here/.venv}
demo=$here/demo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
rm -rf "$demo"
mkdir -p "$demo"
echo "[demo] writing synthetic dark runs (3 runs x 2 modules, 3 sequences each, lost trains) to $demo/raw"
"$venv/bin/python" -m calib_mpi.synthetic.xfel "$demo/raw" --modules 0 1 --cells 8 --trains 32 \
  --config "$demo/demo.conf" --results "$demo/results"
echo "[demo] config file $demo/demo.conf:"
sed 's/^/    /' "$demo/demo.conf"
echo "[demo] running: mpirun -n $np calib-mpi $demo/demo.conf"
mpirun -n "$np" "$venv/bin/calib-mpi" "$demo/demo.conf"
echo "[demo] comparing with the ground truth ($demo/raw/truth.h5):"
"$venv/bin/python" -m calib_mpi.synthetic.check "$demo/results" "$demo/raw/truth.h5"
echo "[demo] constants are in $demo/results/dark/ (inspect with h5ls -r or h5py)"
