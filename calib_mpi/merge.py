"""Merge of drscs results across currents by collective communication (steps.md section 4).

Each current is processed by some rank (or group of ranks); the rank holding current ``c`` of
a set of series (e.g. one ASIC, all cells) has the :func:`~calib_mpi.process.drscs.process_scan`
dictionary of those series. :func:`merge_across_currents` applies the rule of
:func:`~calib_mpi.process.drscs.choose_current` with the error codes of every current
(``allgather``) and builds the merged fields with one ``Allreduce`` (sum) per field: each rank
contributes its current's values where that current was chosen and zeros elsewhere, and every
series is chosen from exactly one current, so the sum is the chosen value (NaN included). The
result equals :func:`~calib_mpi.process.drscs.merge_results` of all currents, on every rank
(or, with ``root``, one ``Reduce`` per field to the rank that writes the result).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from mpi4py import MPI

from .process.drscs import choose_current

__all__ = ["merge_across_currents"]


def merge_across_currents(
    comm: MPI.Comm,
    results_by_current: Mapping[int, Mapping[str, np.ndarray]],
    order: Sequence[int] | None = None,
    root: int | None = None,
) -> dict[str, np.ndarray] | None:
    """Collective: merge per-current results of the same series held by different ranks.

    Parameters
    ----------
    comm : communicator of all ranks holding currents of these series (ranks holding none
        take part with an empty mapping).
    results_by_current : current index (0..n-1 over the whole communicator) -> process_scan
        dict of this rank's currents; every index held by exactly one rank, same keys and
        shapes everywhere. ``error_code`` has the series shape, e.g. ``(P,)`` or
        ``(1, cell, 64, 64)``; every other field broadcasts it along its leading axis, e.g.
        ``(k, P)`` or ``(k, cell, 64, 64)``.
    order : ranks of the configured current order (see ``choose_current``); default index.
    root : rank of ``comm`` that gets the result (``Reduce``); None: every rank
        (``Allreduce``).

    Returns
    -------
    The merged dict (same keys, plus ``chosen_current`` int16 of the ``error_code`` shape:
    the index of the chosen current, -1 where the series failed in every current), on every
    rank or on ``root`` only (None elsewhere).
    """
    mine = {int(c): r for c, r in results_by_current.items()}
    held = comm.allgather(sorted(mine))
    all_cur = sorted(c for h in held for c in h)
    if all_cur != list(range(len(all_cur))) or not all_cur:
        raise ValueError(f"currents held by the ranks must be 0..n-1 once each, got {held}")
    codes: dict[int, np.ndarray] = {}
    for d in comm.allgather({c: np.asarray(r["error_code"]) for c, r in mine.items()}):
        codes.update(d)
    series_shape = codes[0].shape
    chosen, _ = choose_current(np.stack([codes[c].reshape(-1) for c in all_cur]), order=order)
    chosen = chosen.reshape(series_shape)
    # field layout (name, shape, dtype) from the lowest current
    owner = next(i for i, h in enumerate(held) if 0 in h)
    layout = comm.bcast([(k, np.shape(v), np.asarray(v).dtype) for k, v in mine[0].items()]
                        if comm.rank == owner else None, root=owner)
    out: dict[str, np.ndarray] = {}
    for key, shape, dtype in layout:
        buf = np.zeros(shape, dtype)
        for c, r in mine.items():
            sel = np.broadcast_to(chosen == c, shape)
            buf[sel] = np.asarray(r[key], dtype)[sel]
        if root is None:
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        elif comm.rank == root:
            comm.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=root)
        else:
            comm.Reduce(buf, None, op=MPI.SUM, root=root)
        out[key] = buf
    if root is not None and comm.rank != root:
        return None
    out["chosen_current"] = np.where(out["error_code"] == 0, chosen, -1).astype(np.int16)
    return out
