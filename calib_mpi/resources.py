"""Files shipped inside the package (``calib_mpi/data/``), found through ``importlib.resources``.

``calib_mpi/data/facility_specifics/`` holds the facility defaults (``xfel.conf``,
``cfel.conf``) and the SLURM defaults (``cluster.conf``); ``calib_mpi/data/jobscripts/`` the
batch-script template. In the source tree the top-level ``facility_specifics/`` and
``jobscripts/`` are links to these directories, so the same files are used from a checkout, an
editable install and a wheel.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

__all__ = ["data_dir"]

_files = contextlib.ExitStack()
atexit.register(_files.close)


def data_dir(name: str) -> Path:
    """File-system path of the shipped data directory ``calib_mpi/data/<name>``.

    For an ordinary installation this is the directory inside the installed package; were the
    package imported from a zip file, the directory would be extracted to a temporary place
    that lives until the interpreter exits.
    """
    ref = resources.files("calib_mpi").joinpath("data", name)
    return Path(_files.enter_context(resources.as_file(ref)))
