#!/usr/bin/env bash
# Idempotent set-up of everything calib-mpi needs; says for each step whether it did something.
#   1. (only when CALIB_MPI_APT=1 and run as root, as `make` does for root) Debian packages:
#      parallel HDF5 (OpenMPI flavour) and OpenMPI itself;
#   2. finds the MPI and the parallel HDF5 to build against - the ones already there, e.g. from
#      `module load ...` on a cluster:
#        MPI:  $MPICC, else `mpicc` on PATH;
#        HDF5: $HDF5_DIR (a prefix with include/ and lib/), or $HDF5_INCLUDEDIR/$HDF5_LIBDIR,
#              else `h5pcc` on PATH (or $H5PCC), else pkg-config (hdf5-openmpi, hdf5-mpi);
#      the HDF5 must be built with parallel support (H5_HAVE_PARALLEL);
#   3. a virtual environment ($CALIB_MPI_VENV, default .venv) with mpi4py, numpy, scipy, ...;
#   4. h5py built from source against that HDF5 (HDF5_MPI=ON; checked: h5py.get_config().mpi);
#   5. the European XFEL tools (extra-data, extra-geom, euxfel-extra);
#   6. calib-mpi itself, installed editable into the venv.
# Nothing outside the venv is touched unless step 1 is asked for.
# `bash scripts/setup-env.sh --show` only prints what step 2 finds and exits.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${CALIB_MPI_VENV:-$here/.venv}
py=${PYTHON:-python3}
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------- 1. Debian packages
apt_debian() {
  local pkgs=(libhdf5-openmpi-dev openmpi-bin pkg-config) missing=() p
  # the SLURM integration test needs a real one-node cluster: make test sets WITH_SLURM=1
  [ "${WITH_SLURM:-0}" = 1 ] && pkgs+=(slurm-wlm munge)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages present: ${pkgs[*]}"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "CALIB_MPI_APT=1 installs Debian packages and needs root; without root, load your site's MPI and parallel HDF5 (see README, 'Set-up without root') and run with CALIB_MPI_APT=0"
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --------------------------------------------------------------------------- 2. MPI and HDF5
# Sets mpicc (path), hdf5_env (VAR=value words for the h5py build) and hdf5_from (a description).
is_parallel_hdf5() {  # include directory holding H5pubconf.h with H5_HAVE_PARALLEL
  grep -qs '^#define H5_HAVE_PARALLEL 1' "$1/H5pubconf.h"
}

find_mpi_hdf5() {
  mpicc=${MPICC:-$(command -v mpicc || true)}
  [ -n "$mpicc" ] && [ -x "$mpicc" ] || die "no MPI compiler wrapper: 'mpicc' is not on PATH and MPICC is not set. Load your site's MPI (e.g. 'module load mpi/openmpi-x86_64') or set MPICC=/path/to/mpicc"
  command -v mpirun >/dev/null || command -v mpiexec >/dev/null \
    || die "found $mpicc but neither mpirun nor mpiexec on PATH"
  local inc lib h5pcc w
  if [ -n "${HDF5_DIR:-}" ]; then
    is_parallel_hdf5 "$HDF5_DIR/include" \
      || die "HDF5_DIR=$HDF5_DIR: $HDF5_DIR/include/H5pubconf.h is missing or says the HDF5 is not parallel (H5_HAVE_PARALLEL)"
    hdf5_env=("HDF5_DIR=$HDF5_DIR"); hdf5_from="HDF5_DIR=$HDF5_DIR"
    return
  fi
  if [ -n "${HDF5_INCLUDEDIR:-}" ]; then
    is_parallel_hdf5 "$HDF5_INCLUDEDIR" \
      || die "HDF5_INCLUDEDIR=$HDF5_INCLUDEDIR: no H5pubconf.h with H5_HAVE_PARALLEL there"
    hdf5_env=("HDF5_INCLUDEDIR=$HDF5_INCLUDEDIR" "HDF5_LIBDIR=${HDF5_LIBDIR:-}")
    hdf5_from="HDF5_INCLUDEDIR=$HDF5_INCLUDEDIR"
    return
  fi
  h5pcc=${H5PCC:-$(command -v h5pcc || true)}
  if [ -n "$h5pcc" ]; then
    "$h5pcc" -showconfig 2>/dev/null | grep -Eq 'Parallel HDF5: *yes' \
      || die "$h5pcc: 'h5pcc -showconfig' does not say 'Parallel HDF5: yes'"
    inc=""; lib=""
    for w in $("$h5pcc" -show 2>/dev/null); do
      case $w in
        -I*) [ -z "$inc" ] && is_parallel_hdf5 "${w#-I}" && inc=${w#-I} ;;
        -L*) [ -z "$lib" ] && ls "${w#-L}"/libhdf5.* >/dev/null 2>&1 && lib=${w#-L} ;;
      esac
    done
    if [ -z "$inc" ]; then  # compilers that add the include directory themselves
      w=$(dirname "$(dirname "$(readlink -f "$h5pcc")")")
      is_parallel_hdf5 "$w/include" && inc=$w/include && lib=${lib:-$w/lib}
    fi
    [ -n "$inc" ] || die "$h5pcc: cannot find the HDF5 include directory from 'h5pcc -show'; set HDF5_DIR"
    hdf5_env=("HDF5_INCLUDEDIR=$inc" "HDF5_LIBDIR=$lib"); hdf5_from="$h5pcc"
    return
  fi
  for w in hdf5-openmpi hdf5-mpi; do
    inc=$(pkg-config --variable=includedir "$w" 2>/dev/null || true)
    if [ -n "$inc" ] && is_parallel_hdf5 "$inc"; then
      hdf5_env=("HDF5_PKGCONFIG_NAME=$w"); hdf5_from="pkg-config $w"
      return
    fi
  done
  die "no parallel HDF5 found (HDF5_DIR not set, no h5pcc on PATH, no pkg-config hdf5-openmpi). Load your site's parallel HDF5 (e.g. 'module load hdf5/1.14-openmpi'), or set HDF5_DIR=/prefix/of/parallel/hdf5; on Debian as root: CALIB_MPI_APT=1 bash scripts/setup-env.sh"
}

if [ "${1:-}" = "--show" ]; then
  find_mpi_hdf5
  echo "MPICC=$mpicc"
  printf '%s\n' "${hdf5_env[@]}"
  echo "HDF5 from: $hdf5_from"
  exit 0
fi

if [ "${CALIB_MPI_APT:-0}" = 1 ]; then
  apt_debian
else
  say "no Debian packages installed (CALIB_MPI_APT=1 as root does that); using the MPI and HDF5 found"
fi
find_mpi_hdf5
say "MPI: $mpicc; parallel HDF5: $hdf5_from"

# --------------------------------------------------------------------------- 3. venv, Python packages
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

# --------------------------------------------------------------------------- 4. parallel h5py
h5py_mpi() { "$vpy" -c 'import sys, h5py; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; }
if ! h5py_mpi; then
  say "building h5py against the parallel HDF5 (${hdf5_env[*]}; about a minute)"
  "$vpy" -m pip uninstall -q -y h5py 2>/dev/null || true
  env CC="$mpicc" CFLAGS=-g0 HDF5_MPI=ON "${hdf5_env[@]}" \
    "$vpy" -m pip install -q --disable-pip-version-check --no-cache-dir \
    --no-build-isolation --no-binary=h5py h5py
  h5py_mpi || die "h5py was built without MPI support"
  say "h5py $("$vpy" -c 'import h5py; print(h5py.__version__)') built with MPI support"
else
  say "h5py with MPI support present ($("$vpy" -c 'import h5py; print(h5py.__version__, "HDF5", h5py.version.hdf5_version)'))"
fi

# --------------------------------------------------------------------------- 5. XFEL tools
# EXtra-data reads XFEL files (control data, and the tests' reference), EXtra-geom draws the
# detector, EXtra (euxfel-extra) holds the operating-condition and CalCat rules.
# Installed after the parallel h5py, and checked not to have replaced it.
eco_pkgs=(extra-data extra-geom euxfel-extra)
if ! "$vpy" -c 'import extra_data, extra_geom, extra.calibration' 2>/dev/null; then
  say "installing the European XFEL tools: ${eco_pkgs[*]}"
  pipq "${eco_pkgs[@]}"
  h5py_mpi || die "installing ${eco_pkgs[*]} replaced the parallel h5py"
else
  say "European XFEL tools present ($("$vpy" -c 'import extra_data, extra_geom; print("extra-data", extra_data.__version__, "extra-geom", extra_geom.__version__)'), euxfel-extra)"
fi

# --------------------------------------------------------------------------- 6. calib-mpi
if ! "$vpy" -c "import calib_mpi" 2>/dev/null || [ ! -x "$venv/bin/calib-mpi" ] || [ ! -x "$venv/bin/calib-mpi-submit" ]; then
  say "installing calib-mpi (editable) into the venv"
  pipq --no-build-isolation --no-deps -e "$here"
else
  say "calib-mpi installed in the venv"
fi

# the compiled kernels, built once for this machine's CPU and this version of their source:
# jobs then load them without compiling or importing numba (calib_mpi/process/_jit.py)
if kmod=$("$vpy" -c 'from calib_mpi.process import _jit; p = _jit.prebuilt_path(); print(p or ""); raise SystemExit(p is None)' 2>/dev/null); then
  say "compiled kernels present: $kmod"
elif "$vpy" -c 'import numba' 2>/dev/null; then
  say "compiling the kernels ahead of time (numba.pycc, ~10 s)"
  if kmod=$("$vpy" -m calib_mpi.process.aot); then
    say "compiled kernels: $kmod"
  else
    say "WARNING: compiling the kernels failed (a C compiler is needed); jobs compile them at first use (numba JIT)"
  fi
else
  say "numba not installed: jobs use the numpy kernels (slower)"
fi
