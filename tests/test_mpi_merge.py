"""Merge of drscs results across currents held by different ranks (calib_mpi.merge).

``tests/mpi_merge_script.py`` runs under the real ``mpirun``: current c is processed by rank
``c % n`` (with 4 ranks one rank holds none, with 2 one holds two), and every rank checks that
the collective merge equals the serial ``choose_current`` + ``merge_results`` exactly.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from calib_mpi.mpienv import clean_environ

from .conftest import MPI_ENV

pytestmark = pytest.mark.mpi

SCRIPT = Path(__file__).with_name("mpi_merge_script.py")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_merge_across_currents_equals_serial(n):
    cmd = ["mpirun", "-n", str(n), sys.executable, str(SCRIPT)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=90,
                           env=clean_environ(MPI_ENV), start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirun -n {n} did not finish within 90 s (hung collective?)\n{e.stdout}")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    # ranks print concurrently, so lines can run into each other: match, don't split lines
    ok = [("OK " + m).split() for m in re.findall(r"<OK ([^>]*)>", p.stdout)]
    assert sorted(int(w[1]) for w in ok) == list(range(n)), out
    counts = {tuple(w[2:]) for w in ok}
    assert len(counts) == 1, out  # the same merge on every rank
    assert all(int(c) > 0 for c in counts.pop()), out  # every current chosen somewhere
