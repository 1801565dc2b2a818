"""Shared fixtures: synthetic run sets and a real ``mpirun`` runner with a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from calib_mpi.mpienv import clean_environ
from calib_mpi.synthetic.xfel import DarkRunSet, write_config, write_dark_runs

VENV_BIN = Path(sys.executable).parent
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


@dataclass
class MPIResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_mpi(n: int, args: list[str], timeout: float = 120, env: dict | None = None,
            mpirun_args: tuple[str, ...] = ()) -> MPIResult:
    """Run ``mpirun -n n [mpirun_args] calib-mpi args`` in a subprocess; a hang fails the
    test."""
    full_env = clean_environ({**MPI_ENV, **(env or {})})
    cmd = ["mpirun", "-n", str(n), *mpirun_args, str(VENV_BIN / "calib-mpi"), *map(str, args)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                           start_new_session=True)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirun -n {n} did not finish within {timeout} s (hung collective?)\n"
                    f"stdout: {e.stdout}\nstderr: {e.stderr}")
    return MPIResult(p.returncode, p.stdout, p.stderr)


#: a stand-in for ssh: drops the options and the host name and runs the command here (as
#: the node's daemon, whose pid it leaves in <dir>/daemon-<host>.pid), with a temporary
#: directory of the node's own: the daemons share the machine's host name, and in one
#: session directory their PMIx stores collide (about 1 launch in 8 failed)
RSH_AGENT = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -*) shift ;; *) break ;; esac
done
host=$1
shift
echo $$ > "{dir}/daemon-$host.pid"
mkdir -p "{dir}/tmp-$host"
export TMPDIR="{dir}/tmp-$host" OMPI_MCA_orte_tmpdir_base="{dir}/tmp-$host"
eval "exec $*"
"""

#: Open MPI over TCP on the loopback device (no shared-memory transport: ranks of different
#: "nodes" share the machine, but must talk like separate hosts); ranks yield the cores while
#: they wait (the daemons and 4 ranks share 2 cores) and are not bound; messages between
#: the daemons go direct
NODE_ENV = {"OMPI_MCA_mpi_yield_when_idle": "1"}
NODE_MCA = ("--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo",
            "--mca", "oob_tcp_if_include", "lo", "--mca", "rtc", "^hwloc",
            "--mca", "routed", "direct")
#: loopback addresses standing for the nodes' host names (no /etc/hosts entries needed)
NODE_HOSTS = ("127.0.0.2", "127.0.0.3")
#: prints the node sizes (MPI_COMM_TYPE_SHARED) of the ranks, from rank 0
NODE_PROBE = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
              "s = c.gather(c.Split_type(MPI.COMM_TYPE_SHARED).size); "
              "c.rank or print(*s)")


@dataclass
class Nodes:
    """A multi-node MPI job on this machine: one Open MPI daemon per node, started through
    an ssh stand-in, host names that are loopback addresses, TCP between all ranks."""

    dir: Path

    def mpirun_args(self, layout: tuple[int, ...]) -> tuple[str, ...]:
        """``mpirun`` options placing ``layout[i]`` consecutive ranks on node i."""
        hosts = ",".join(f"{h}:{n}" for h, n in zip(NODE_HOSTS, layout, strict=False))
        return ("--host", hosts, "--mca", "plm_rsh_agent", str(self.dir / "rsh"), *NODE_MCA)

    def command(self, layout: tuple[int, ...], args: list) -> tuple[list[str], dict]:
        """``(argv, env)`` of ``mpirun ... calib-mpi args`` over the nodes of ``layout``."""
        cmd = ["mpirun", "-n", str(sum(layout)), *self.mpirun_args(layout),
               str(VENV_BIN / "calib-mpi"), *map(str, args)]
        return cmd, clean_environ({**MPI_ENV, **NODE_ENV})

    def run(self, layout: tuple[int, ...], args: list, timeout: float = 120,
            env: dict | None = None) -> MPIResult:
        """Run calib-mpi with ``layout[i]`` ranks on node i (a hang fails the test)."""
        return run_mpi(sum(layout), args, timeout, {**NODE_ENV, **(env or {})},
                       self.mpirun_args(layout))

    def daemon_pid(self, node: int) -> int:
        """Process id of node ``node``'s daemon (``orted``) of the last job."""
        return int((self.dir / f"daemon-{NODE_HOSTS[node]}.pid").read_text())


@pytest.fixture(scope="session")
def nodes(tmp_path_factory) -> Nodes:
    """Two simulated nodes; skips when this machine's Open MPI cannot run such a job."""
    if shutil.which("mpirun") is None:
        pytest.skip("no mpirun on PATH")
    d = tmp_path_factory.mktemp("nodes")
    agent = d / "rsh"
    agent.write_text(RSH_AGENT.format(dir=d))
    agent.chmod(0o755)
    n = Nodes(d)
    cmd = ["mpirun", "-n", "4", *n.mpirun_args((2, 2)), sys.executable, "-c", NODE_PROBE]
    for _ in range(2):  # a second try, so that one failed launch does not skip the tests
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                               env=clean_environ({**MPI_ENV, **NODE_ENV}),
                               start_new_session=True)
            why = None
            if p.returncode or p.stdout.strip() != "2 2 2 2":
                why = f"exit code {p.returncode}, output {p.stdout!r} {p.stderr[-500:]!r}"
        except subprocess.TimeoutExpired:
            why = "the probe job did not finish within 60 s"
        if why is None:
            break
    if why:
        pytest.skip("cannot simulate 2 nodes here (mpirun over an ssh stand-in to 127.0.0.2 "
                    f"and 127.0.0.3, TCP on lo; expected MPI_COMM_TYPE_SHARED to give 2 nodes "
                    f"of 2 ranks): {why}")
    return n


@dataclass
class RunSet:
    raw: Path
    params: DarkRunSet

    @property
    def truth(self) -> Path:
        return self.raw / "truth.h5"

    def config(self, path: Path, out: Path, **extra) -> Path:
        return write_config(path, self.raw, out, self.params, **extra)

    def copy(self, dest: Path) -> RunSet:
        """A copy whose files can be damaged without touching the shared set."""
        shutil.copytree(self.raw, dest, copy_function=os.link)
        return RunSet(dest, self.params)


@pytest.fixture(scope="session")
def dark_set(tmp_path_factory) -> RunSet:
    """2 modules, 3 runs, 3 sequences, 4 cells, 20 trains; module 1 starts one train later and
    loses trains 3 and 11 (17 trains with data)."""
    p = DarkRunSet()
    raw = tmp_path_factory.mktemp("dark") / "raw"
    write_dark_runs(raw, p)
    return RunSet(raw, p)


def detach(path: Path) -> None:
    """Replace a hard link by a private copy before modifying the file."""
    tmp = path.with_name(path.name + ".copy")
    shutil.copyfile(path, tmp)
    os.replace(tmp, path)


def run_jobs(base: Path, jobs: dict[int, int], write_conf, result: str, timeout: float = 60
             ) -> dict[int, tuple[Path, MPIResult]]:
    """Run one job per ``{ranks: chunk_frames}``; ``write_conf(conf_path, out_dir,
    chunk_frames)`` writes its config. Returns ``{ranks: (out_dir / result, MPIResult)}``."""
    outs = {}
    for n, chunk in jobs.items():
        out = base / f"out{n}"
        conf = write_conf(base / f"run{n}.conf", out, chunk)
        r = run_mpi(n, [conf], timeout=timeout)
        assert r.returncode == 0, r.output
        outs[n] = (out / result, r)
    return outs


def load_datasets(path: Path, names) -> dict:
    """The datasets ``names`` of an HDF5 file as arrays."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in names}


#: per-(cell, pixel) result fields of drscs (each current's and the merged ones)
DRSCS_FIELDS = ("slope", "offset", "residual", "gain_level", "threshold", "n_points",
                "saturation_start", "error_code", "bad_pixels")


def assert_currents_equal_serial(got: dict, truth: dict, currents) -> None:
    """Each current's result (``currents/<name>/<field>`` in ``got``) equals a serial
    ``process_scan`` of the truth's scans (``analog``, ``digital``, ``valid``: (current,
    step, cell, rows, cols)), exactly."""
    from calib_mpi.process.drscs import process_scan

    a, d, v = truth["analog"], truth["digital"], truth["valid"]
    n = a.shape[1]
    for c, name in enumerate(currents):
        want = process_scan(a[c].reshape(n, -1), d[c].reshape(n, -1), v[c].reshape(n, -1))
        for k in DRSCS_FIELDS:
            g = got[f"currents/{name}/{k}"]
            assert np.array_equal(g, want[k].reshape(g.shape).astype(g.dtype),
                                  equal_nan=True), (name, k)
