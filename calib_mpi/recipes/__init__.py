"""Measurement recipes: how each measurement plugs its processor into gather and join.

A recipe is built per job as ``Recipe(cfg, plan)`` and driven by :func:`calib_mpi.pipeline.run`:

- ``start(units)``: create the per-ASIC processors of this rank's units;
- ``consume(unit, run_index, frames, r0, c0, cells, trains, group)``: called by
  :func:`calib_mpi.gather.gather_run` for every block of frames of an owned ASIC;
- ``end_run(run_index)``: all frames of a run have arrived;
- ``finalize(comm)`` (collective): per-unit result dictionaries of arrays
  ``(k, cell, 64, 64)`` named as in ``specs``;
- ``module_extra(comm, results)`` (collective): small per-module datasets, identical on all
  ranks; ``summary(comm, results)`` (collective) and ``describe(module, summary)``: the
  report printed at the end (drscs jobs are reported by :mod:`calib_mpi.currents`, so the
  drscs recipe has no ``describe``).

The class attributes ``name`` and ``specs`` (the :class:`~calib_mpi.join.DatasetSpec` list of
the output file) describe the measurement. Adding a measurement means adding a module here, an
entry to :data:`RECIPES` and one to ``calib_mpi.config.RUNS_NEEDED``; gather, join and the
command line stay as they are.
"""

from __future__ import annotations

import importlib

#: measurement -> (module, class); imported on use, so a dark job does not load scipy
RECIPES = {"dark": ("dark", "DarkRecipe"), "drscs": ("drscs", "DrscsRecipe"),
           "drspc": ("drspc", "DrspcRecipe"), "xray": ("xray", "XrayRecipe")}


def recipe_class(measurement: str) -> type:
    """The recipe class of ``measurement`` (a key of :data:`RECIPES`)."""
    module, name = RECIPES[measurement]
    return getattr(importlib.import_module(f".{module}", __name__), name)
