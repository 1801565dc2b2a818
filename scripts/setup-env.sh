#!/usr/bin/env bash
# Idempotent set-up of everything calib-mpi needs on a fresh Debian machine:
#   1. Debian packages: parallel HDF5 (OpenMPI flavour) and OpenMPI itself;
#   2. a virtual environment .venv with mpi4py, numpy, scipy, configargparse, ...;
#   3. h5py built from source against the parallel HDF5 (checked: h5py.get_config().mpi);
#   4. calib-mpi itself, installed editable into the venv.
# Each step says whether it did something or found it already done.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CALIB_MPI_VENV:-$here/.venv}
py=${PYTHON:-python3}
say() { printf '[setup] %s\n' "$*"; }

apt_pkgs=(libhdf5-openmpi-dev openmpi-bin pkg-config)
# the SLURM integration test needs a real one-node cluster: make test sets WITH_SLURM=1
[ "${WITH_SLURM:-0}" = 1 ] && apt_pkgs+=(slurm-wlm munge)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present: ${apt_pkgs[*]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  "$py" -m venv "$venv"
else
  say "virtual environment exists: $venv"
fi
vpy="$venv/bin/python"
pipq() { "$vpy" -m pip install -q --disable-pip-version-check "$@"; }

base_pkgs=(mpi4py numpy scipy configargparse cython pkgconfig packaging 'setuptools>=77.0.1' wheel pytest ruff numba matplotlib tqdm)
if ! "$vpy" -c 'import mpi4py, numpy, scipy, configargparse, pytest, numba, matplotlib, tqdm' 2>/dev/null; then
  say "installing Python packages: ${base_pkgs[*]}"
  pipq --only-binary=mpi4py,numpy,scipy,numba "${base_pkgs[@]}"
else
  say "Python packages present (mpi4py, numpy, scipy, configargparse, numba, pytest, ...)"
fi

if ! "$vpy" -c 'import sys, h5py; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
  say "building h5py against parallel HDF5 (about a minute)"
  "$vpy" -m pip uninstall -q -y h5py 2>/dev/null || true
  CC=mpicc CFLAGS=-g0 HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-openmpi \
    "$vpy" -m pip install -q --disable-pip-version-check --no-cache-dir \
    --no-build-isolation --no-binary=h5py h5py
  "$vpy" -c 'import sys, h5py; sys.exit(0 if h5py.get_config().mpi else 1)' \
    || { say "ERROR: h5py was built without MPI support"; exit 1; }
  say "h5py $("$vpy" -c 'import h5py; print(h5py.__version__)') built with MPI support"
else
  say "h5py with MPI support present ($("$vpy" -c 'import h5py; print(h5py.__version__, "HDF5", h5py.version.hdf5_version)'))"
fi

# the facility's own tools: EXtra-data reads XFEL files (control data, and the tests' reference),
# EXtra-geom draws the detector, EXtra (euxfel-extra) holds the operating-condition and CalCat rules.
# Installed after the parallel h5py, and checked not to have replaced it.
eco_pkgs=(extra-data extra-geom euxfel-extra)
if ! "$vpy" -c 'import extra_data, extra_geom, extra.calibration' 2>/dev/null; then
  say "installing the European XFEL tools: ${eco_pkgs[*]}"
  pipq "${eco_pkgs[@]}"
  "$vpy" -c 'import sys, h5py; sys.exit(0 if h5py.get_config().mpi else 1)' \
    || { say "ERROR: installing ${eco_pkgs[*]} replaced the parallel h5py"; exit 1; }
else
  say "European XFEL tools present ($("$vpy" -c 'import extra_data, extra_geom; print("extra-data", extra_data.__version__, "extra-geom", extra_geom.__version__)'), euxfel-extra)"
fi

if ! "$vpy" -c "import calib_mpi" 2>/dev/null || [ ! -x "$venv/bin/calib-mpi" ] || [ ! -x "$venv/bin/calib-mpi-submit" ]; then
  say "installing calib-mpi (editable) into the venv"
  pipq --no-build-isolation --no-deps -e "$here"
else
  say "calib-mpi installed in the venv"
fi
