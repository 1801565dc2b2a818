"""Environment for child processes that start MPI jobs (mpirun, sbatch).

A process that initialised MPI (even a singleton, e.g. by importing ``mpi4py.MPI``) carries
the runtime's variables (``OMPI_*`` of its job, ``PMIX_*``); a ``mpirun`` started with them
believes it runs inside that job and fails without a word. Children get them removed.
"""

from __future__ import annotations

import os

#: prefixes of variables that describe a running MPI job (Open MPI / PMIx / PMI)
RUNTIME_PREFIXES = ("OMPI_COMM_WORLD", "OMPI_MCA_orte", "OMPI_MCA_ess", "OMPI_MCA_pmix",
                    "OMPI_FILE_LOCATION", "OMPI_UNIVERSE_SIZE", "OMPI_APP_CTX", "OMPI_FIRST",
                    "OMPI_NUM_APP", "OMPI_ARGV", "OMPI_COMMAND", "OMPI_MCA_initial_wdir",
                    "OMPI_MCA_shmem_RUNTIME", "PMIX_", "PMI_")


def clean_environ(extra: dict | None = None, base: dict | None = None) -> dict:
    """A copy of ``base`` (default: this process's environment as the OS sees it) without MPI
    runtime variables, updated with ``extra``."""
    env = dict(os.environ if base is None else base)
    env = {k: v for k, v in env.items() if not k.startswith(RUNTIME_PREFIXES)}
    env.update(extra or {})
    return env
