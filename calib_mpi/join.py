"""Join: write each module's constants with one collective parallel HDF5 write.

Every rank opens the module file (mpio, collectively), creates the same datasets, and writes
the hyperslabs of the ASICs it owns with collective writes (ranks owning fewer ASICs of the
module take part with empty selections). The file is written under the job's temporary name
(:func:`calib_mpi.guard.tmp_name`) and renamed by rank 0 once every rank has closed it, so no
half-written file ever has the final name. Rank 0 reserves the file's size first (the job is
refused, exit 2, when it does not fit); a write error on any rank ends the job at once
(:func:`calib_mpi.guard.abort_write`, exit 2, temporary file removed) so that no rank is left
waiting in a collective HDF5 call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI

from . import faults
from .errors import CalibError
from .geometry import AsicBlock
from .guard import (
    abort_write,
    add_cleanup,
    check_room,
    drop_cleanup,
    tmp_name,
)
from .parallel import agree, open_h5
from .plan import Unit


@dataclass(frozen=True)
class DatasetSpec:
    """A per-pixel result dataset ``(lead..., cell, frame_rows, frame_cols)``."""

    name: str
    lead: tuple[int, ...]
    dtype: type
    dims: tuple[str, ...]


def _write(dset: h5py.Dataset, start: tuple[int, ...] | None, arr: np.ndarray | None,
           collective: bool) -> None:
    """One (collective) write of ``arr`` at ``start``, or an empty contribution."""
    fspace = dset.id.get_space()
    dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
    if collective:
        dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
    if arr is None:
        fspace.select_none()
        mspace = h5py.h5s.create_simple((1,))
        mspace.select_none()
        buf = np.zeros(1, dset.dtype)
    else:
        buf = np.ascontiguousarray(arr, dtype=dset.dtype)
        fspace.select_hyperslab(start, buf.shape)
        mspace = h5py.h5s.create_simple(buf.shape)
    dset.id.write(mspace, fspace, buf, dxpl=dxpl)


def _set_attr(obj, key: str, value) -> None:
    if isinstance(value, str):
        obj.attrs[key] = value
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        obj.attrs[key] = np.array(value, dtype=h5py.string_dtype())
    else:
        obj.attrs[key] = value


@dataclass
class ResultPart:
    """Datasets of one kind in a module file: ``<prefix><spec.name>`` for every spec, with
    this rank's ASIC results (unit -> {name: (lead..., cell, 64, 64)})."""

    specs: list[DatasetSpec]
    results: dict[Unit, dict[str, np.ndarray]]
    prefix: str = ""


def result_size(parts: list[ResultPart], n_cells: int, frame_shape: tuple[int, int],
                extra: dict[str, np.ndarray], attrs: dict) -> int:
    """Bytes a module file will take, roughly from above: the datasets, one index entry per
    chunk and 256 KiB for HDF5's own structures."""
    n, chunks = 0, 0
    for part in parts:
        for spec in part.specs:
            k = int(np.prod(spec.lead, dtype=np.int64)) * n_cells
            n += k * frame_shape[0] * frame_shape[1] * np.dtype(spec.dtype).itemsize
            chunks += k * (frame_shape[0] // 64) * (frame_shape[1] // 64)
    n += sum(np.asarray(a).nbytes for a in extra.values())
    n += sum(len(str(v)) for v in attrs.values())
    return n + 64 * chunks + 256 * 1024


def write_module(comm: MPI.Comm, module: int, path: Path, driver: str, n_cells: int,
                 blocks: list[AsicBlock], frame_shape: tuple[int, int],
                 parts: list[ResultPart], attrs: dict, extra: dict[str, np.ndarray]) -> None:
    """Collectively write one module file (all ranks call this for every module).

    Each part's ``results`` holds this rank's units of ``module`` (a rank may hold none);
    ``attrs`` (root attributes) and ``extra`` (small datasets, path -> array) must be
    identical on all ranks.
    """
    if driver != "mpio" and comm.size != 1:
        raise RuntimeError("serial HDF5 output needs a single rank")
    tmp = tmp_name(path)
    err = None
    if comm.rank == 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_room(tmp, result_size(parts, n_cells, frame_shape, extra, attrs))
        except (OSError, CalibError) as e:
            err = e
    agree(comm, err, name_rank=False)  # rank 0's checks: everybody goes on, or nobody
    add_cleanup(tmp)
    mine = [sorted(part.results) for part in parts]
    n_calls = comm.allgather([len(m) for m in mine])
    n_calls = [max(n[i] for n in n_calls) for i in range(len(parts))]
    try:
        f = open_h5(str(tmp), "w", driver, comm)
    except Exception as e:  # collective open: every rank sees the failure
        err = e
    agree(comm, err and OSError(f"{tmp}: cannot be created ({err})"))
    try:  # no agreement possible inside: a failing rank ends the job (others may be in HDF5)
        _fill(comm, f, driver, collective=driver == "mpio", n_cells=n_cells, blocks=blocks,
              frame_shape=frame_shape, parts=parts, mine=mine, n_calls=n_calls, attrs=attrs,
              extra=extra)
        f.close()
    except Exception as e:
        abort_write(comm, tmp, path, e)
    comm.Barrier()
    err = None
    if comm.rank == 0:
        try:
            os.replace(tmp, path)
        except OSError as e:
            err = e
    drop_cleanup(tmp)
    agree(comm, err)


def _fill(comm: MPI.Comm, f: h5py.File, driver: str, collective: bool, n_cells: int,
          blocks: list[AsicBlock], frame_shape: tuple[int, int], parts: list[ResultPart],
          mine: list, n_calls: list[int], attrs: dict, extra: dict) -> None:
    """Attributes, small datasets and every rank's ASIC hyperslabs of one module file."""
    for k, v in attrs.items():
        _set_attr(f, k, v)
    for name, arr in extra.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "U":  # parallel HDF5 cannot write variable-length strings
            arr = np.char.encode(arr, "utf-8")
        d = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
        if comm.rank == 0 or driver != "mpio":
            d[...] = arr
    faults.write_fault(comm.rank)
    faults.write_pause()
    for part, units, n in zip(parts, mine, n_calls, strict=True):
        for spec in part.specs:
            shape = spec.lead + (n_cells,) + tuple(frame_shape)
            # one HDF5 chunk per (lead, cell) and ASIC: every ASIC write is whole chunks
            # (2.5x faster than a contiguous layout), and a frame [k, c] is 16 small chunks
            d = f.create_dataset(part.prefix + spec.name, shape=shape, dtype=spec.dtype,
                                 chunks=(1,) * (len(spec.lead) + 1) + (64, 64))
            d.attrs["dims"] = np.array(spec.dims, dtype=h5py.string_dtype())
            for i in range(n):
                if i < len(units):
                    b = blocks[units[i].block]
                    start = (0,) * (len(spec.lead) + 1) + (b.rows.start, b.cols.start)
                    _write(d, start, part.results[units[i]][spec.name], collective)
                else:
                    _write(d, None, None, collective)
