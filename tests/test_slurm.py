"""SLURM job scripts and ``calib-mpi-submit``: rendering and error handling without SLURM, and a
real dark job on a one-node SLURM cluster (slurmctld + slurmd + munged started here)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from calib_mpi import submit
from calib_mpi.config import facility_dir

from .conftest import MPI_ENV

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An isolated facility directory (real xfel.conf, empty cluster.conf) and no
    ``CALIB_MPI_*`` variables from the caller's environment."""
    fac = tmp_path / "facility"
    fac.mkdir()
    shutil.copy(facility_dir() / "xfel.conf", fac / "xfel.conf")
    (fac / "cluster.conf").write_text("# empty\n")
    for key in list(os.environ):
        if key.startswith("CALIB_MPI_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CALIB_MPI_FACILITY_DIR", str(fac))
    return fac


@pytest.fixture
def conf(tmp_path, site) -> Path:
    path = tmp_path / "run.conf"
    path.write_text("facility = xfel\nmeasurement = dark\ninput_dir = /data/raw\n"
                    "runs = 819 820 821\nmodules = 0-15\n"
                    f"output_dir = {tmp_path / 'results'}\n")
    return path


def dry_run(capsys, *argv: str) -> str:
    rc = submit.main(["--dry-run", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def sbatch_lines(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script, re.M))


def test_template_is_a_valid_bash_script_with_documented_placeholders():
    text = submit.default_template().read_text()
    names = set(re.findall(r"@([A-Z_]+)@", text))
    notes = "\n".join(line for line in text.splitlines() if line.startswith("##"))
    for name in names:
        assert f"@{name}@ " in notes, f"placeholder {name} is not documented"
    rendered = submit.render(text, {n: "x" for n in names})
    assert rendered.startswith("#!/bin/bash\n")
    check = subprocess.run(["bash", "-n"], input=rendered, text=True, capture_output=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr


def test_dry_run_defaults(capsys, conf, tmp_path):
    script = dry_run(capsys, conf)
    sb = sbatch_lines(script)
    assert sb["job-name"] == "calib-mpi"
    assert sb["nodes"] == "1"
    assert sb["ntasks-per-node"] == "16"
    assert sb["time"] == "01:00:00"
    assert sb["output"] == f"{tmp_path / 'results' / 'logs'}/calib-mpi-%j.out"
    assert "partition" not in sb and "account" not in sb
    assert f"source {sys.prefix}/bin/activate\n" in script
    assert f'mpirun -n "${{SLURM_NTASKS}}" calib-mpi {conf.resolve()} || status=$?\n' in script
    assert not re.search(r"@[A-Z_]+@", script)
    assert "\n##" not in script
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr
    assert not (tmp_path / "results").exists(), "--dry-run must not create anything"


def test_dry_run_all_options(capsys, conf, tmp_path):
    script = dry_run(
        capsys, conf, "--nodes", "4", "--tasks-per-node", "8", "--time", "1-12:00:00",
        "--partition", "maxwell", "--account", "p002801", "--job-name", "dark-spb",
        "--launcher", "srun", "--srun-args=--mpi=pmix --cpu-bind=cores",
        "--module-load", "mpi/openmpi-x86_64", "--env", "OMPI_MCA_btl=^openib",
        "--env", "A=1 B='two words'", "--sbatch=--exclusive --mem=0",
        "--log-dir", tmp_path / "mylogs",
        "--", "--modules", "3", "--overwrite")
    sb = sbatch_lines(script)
    assert (sb["nodes"], sb["ntasks-per-node"], sb["time"]) == ("4", "8", "1-12:00:00")
    assert (sb["partition"], sb["account"], sb["job-name"]) == ("maxwell", "p002801", "dark-spb")
    assert sb["output"] == f"{tmp_path / 'mylogs'}/calib-mpi-%j.out"
    assert "#SBATCH --exclusive\n#SBATCH --mem=0\n" in script
    assert "module load mpi/openmpi-x86_64\n" in script
    assert "export OMPI_MCA_btl='^openib'\nexport A=1\nexport B='two words'\n" in script
    assert (f"srun --mpi=pmix --cpu-bind=cores calib-mpi {conf.resolve()} --modules 3 "
            "--overwrite || status=$?\n") in script
    assert "mpirun" not in script


@pytest.mark.parametrize("launcher,launch", [
    ("mpirun", 'mpirun -n "${SLURM_NTASKS}" --bind-to none calib-mpi'),
    ("srun", "srun --cpus-per-task=4 --mpi=pmix calib-mpi")])
def test_cpus_per_task(capsys, conf, launcher, launch):
    """More cores per rank: an sbatch line, and ranks that may use them (mpirun binds each
    of one or two ranks to one core; srun does not pass sbatch's value on)."""
    script = dry_run(capsys, conf, "--cpus-per-task", "4", "--launcher", launcher,
                     "--srun-args=--mpi=pmix")
    assert sbatch_lines(script)["cpus-per-task"] == "4"
    assert f"{launch} {conf.resolve()} || status=$?\n" in script
    one = dry_run(capsys, conf, "--launcher", launcher)
    assert "cpus-per-task" not in one and "--bind-to" not in one


def test_env_values_with_blanks_are_quoted(capsys, conf):
    script = dry_run(capsys, conf, "--env", "NOTE='two words'")
    assert "export NOTE='two words'\n" in script


def test_cluster_conf_gives_defaults_and_command_line_wins(capsys, conf, site):
    (site / "cluster.conf").write_text(
        "partition = upex\naccount = exfel\ntasks_per_node = 4\ntime = 02:00:00\n"
        "module_load = mpi/openmpi-x86_64 hdf5\nsbatch = --constraint=EPYC\n"
        "env = OMPI_MCA_pml=ucx\nvenv = none\n")
    script = dry_run(capsys, conf, "--partition", "maxwell")
    sb = sbatch_lines(script)
    assert (sb["partition"], sb["account"]) == ("maxwell", "exfel")
    assert (sb["ntasks-per-node"], sb["time"]) == ("4", "02:00:00")
    assert "module load mpi/openmpi-x86_64\nmodule load hdf5\n" in script
    assert "#SBATCH --constraint=EPYC\n" in script
    assert "export OMPI_MCA_pml=ucx\n" in script
    assert "activate" not in script
    other = site / "other.conf"
    other.write_text("partition = exfel-gpu\n")
    script = dry_run(capsys, conf, "--cluster-conf", other)
    assert sbatch_lines(script)["partition"] == "exfel-gpu"


def test_shipped_cluster_conf_partition_time_modules(capsys, conf, site):
    """The cluster file shipped with calib-mpi sets partition, time and the MPI module."""
    shutil.copy(REPO / "calib_mpi" / "data" / "facility_specifics" / "cluster.conf",
                site / "cluster.conf")
    script = dry_run(capsys, conf)
    sb = sbatch_lines(script)
    assert (sb["partition"], sb["time"]) == ("upex", "02:00:00")
    assert ("type module >/dev/null 2>&1 || source /etc/profile.d/modules.sh\n"
            "module load mpi/openmpi-x86_64\n") in script
    assert script.index("module load") < script.index("activate") < script.index("mpirun")


def test_activate_line_replaces_the_venv(capsys, conf, site, tmp_path):
    line = "source /opt/conda/bin/activate calib"
    (site / "cluster.conf").write_text(f"activate = {line}\n")
    script = dry_run(capsys, conf)
    assert f"\n{line}\n" in script and "bin/activate\n" not in script
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").touch()
    script = dry_run(capsys, conf, "--venv", venv)
    assert f"\n{line}\nsource {venv}/bin/activate\n" in script


def test_relative_config_and_calib_overrides(capsys, conf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = dry_run(capsys, "run.conf", "--", "--output_dir", "elsewhere")
    assert f"calib-mpi {conf.resolve()} --output_dir elsewhere" in script
    assert sbatch_lines(script)["output"] == f"{tmp_path / 'elsewhere' / 'logs'}/calib-mpi-%j.out"


@pytest.mark.parametrize("argv, message", [
    (["missing.conf"], "config file missing.conf does not exist"),
    (["{conf}", "--time", "soon"], "--time 'soon'"),
    (["{conf}", "--nodes", "0"], "at least 1"),
    (["{conf}", "--env", "NOVALUE"], "expected KEY=VALUE"),
    (["{conf}", "--venv", "/nonexistent"], "bin/activate not found"),
    (["{conf}", "--template", "/nonexistent.template"], "template /nonexistent.template"),
    (["{conf}", "--", "--runs", "1", "2"], "dark needs exactly three run(s)"),
])
def test_errors_are_clear(capsys, conf, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    rc = submit.main(["--dry-run"] + [a.format(conf=conf) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err


def test_unknown_cluster_conf_key_is_an_error(capsys, conf, site):
    (site / "cluster.conf").write_text("partiton = maxwell\n")
    assert submit.main([str(conf), "--dry-run"]) == 2
    assert "partiton" in capsys.readouterr().err


def test_help(capsys, site):
    assert submit.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--tasks-per-node" in out and "cluster.conf" in out


def test_render_rules():
    t = "#!/bin/bash\n## note @GONE@\na=@A@\nb=@B@  \n"
    assert submit.render(t, {"A": "1", "B": None}) == "#!/bin/bash\na=1\n"
    assert submit.render(t, {"A": "x\ny", "B": ""}) == "#!/bin/bash\na=x\ny\nb=\n"
    with pytest.raises(submit.SubmitError, match="unknown placeholder"):
        submit.render(t, {"A": "1"})


def test_without_sbatch_says_so(capsys, conf, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert submit.main([str(conf)]) == 2
    err = capsys.readouterr().err
    assert "sbatch not found" in err
    scripts = list((tmp_path / "results" / "logs").glob("calib-mpi-*.sbatch"))
    assert len(scripts) == 1, "the rendered script is kept for a manual sbatch"


def _fake_sbatch(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir()
    exe = bin_dir / "sbatch"
    exe.write_text(f"#!/bin/bash\n{body}\n")
    exe.chmod(0o755)


def test_submit_flow_with_stub_sbatch(capsys, conf, tmp_path, monkeypatch):
    """The submission bookkeeping (no SLURM needed): script written, sbatch called with it,
    job id printed, script renamed after the job."""
    _fake_sbatch(tmp_path / "bin", f'echo "$@" > {tmp_path}/args; echo "4242;cluster"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert submit.main([str(conf), "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    logs = tmp_path / "results" / "logs"
    assert "submitted calib-mpi job 4242" in out
    assert str(logs / "calib-mpi-4242.out") in out
    script = logs / "calib-mpi-4242.sbatch"
    assert sbatch_lines(script.read_text())["nodes"] == "2"
    args = (tmp_path / "args").read_text().split()
    assert args[0] == "--parsable" and args[1].startswith(str(logs / "calib-mpi-"))


def test_sbatch_rejection_is_reported(capsys, conf, tmp_path, monkeypatch):
    _fake_sbatch(tmp_path / "bin", 'echo "sbatch: error: invalid partition specified" >&2; '
                 "exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert submit.main([str(conf), "--partition", "nope"]) == 2
    assert "invalid partition specified" in capsys.readouterr().err


# --- a real one-node SLURM cluster ---------------------------------------------------------

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _run(cmd: list[str], timeout: float, env: dict | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def _tail(path: Path, n: int = 15) -> str:
    if not path.is_file():
        return f"({path.name}: none)"
    return f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _install_slurm() -> None:
    """apt-get install slurm-wlm munge when a daemon or client is missing; skip on failure."""
    if all(shutil.which(t) for t in ("slurmctld", "slurmd", "munged", "sbatch", "sinfo")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("slurm-wlm/munge are not installed and cannot be (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm",
                     "munge"]):
            p = _run(cmd, timeout=600, env=env)
            if p.returncode != 0:
                pytest.skip(f"{' '.join(cmd)} failed ({p.returncode}): "
                            f"{(p.stdout + p.stderr)[-1500:]}")
    except subprocess.TimeoutExpired:
        pytest.skip("installing slurm-wlm/munge took longer than 10 minutes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _daemon_pids(d: Path, name: str) -> set[int]:
    """Pids of the ``name`` daemon of the cluster in ``d``: its pid file, and any ``name``
    process whose command line holds ``d`` (a pid file may not be written yet)."""
    pids = set()
    with contextlib.suppress(OSError, ValueError, IndexError):
        pids.add(int((d / f"{name}.pid").read_text().split()[0]))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(d) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.add(int(proc.name))
    out = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == name and _alive(pid):
                out.add(pid)
    return out


def _stop(d: Path, names: list[str]) -> None:
    """Stop the started daemons of the cluster in ``d``: SIGTERM, then SIGKILL after 15 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all((d / f"{n}.pid").is_file() for n in names):
        time.sleep(0.1)
    pids = {pid for n in names for pid in _daemon_pids(d, n)}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _slurm_conf(d: Path, host: str) -> str:
    return "\n".join([
        f"ClusterName=calibtest{os.getpid()}",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={d}/munge.socket",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/builtin",
        "MpiDefault=none",
        "ReturnToService=2",
        "MailProg=/bin/true",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        f"StateSaveLocation={d}/state",
        f"SlurmdSpoolDir={d}/spool",
        f"SlurmctldPidFile={d}/slurmctld.pid",
        f"SlurmdPidFile={d}/slurmd.pid",
        f"SlurmctldLogFile={d}/slurmctld.log",
        f"SlurmdLogFile={d}/slurmd.log",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 "
        "State=UNKNOWN",
        "PartitionName=debug Default=YES Nodes=ALL MaxTime=INFINITE State=UP",
    ]) + "\n"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """munged, slurmctld and slurmd of a private one-node cluster; yields the environment
    (``SLURM_CONF``) to talk to it. Skips, with the daemons' messages, when they cannot run."""
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster needs root (slurmd, munged)")
    _install_slurm()
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(_slurm_conf(d, host))
    env = dict(os.environ, SLURM_CONF=str(conf))
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    starts = [
        ("munged", ["munged", "--force", f"--socket={d}/munge.socket", f"--key-file={key}",
                    f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
                    f"--seed-file={d}/munged.seed"]),
        ("slurmctld", ["slurmctld", "-f", str(conf)]),
        ("slurmd", ["slurmd", "-f", str(conf)]),
    ]
    started: list[str] = []
    try:
        for name, cmd in starts:
            with open(d / f"{name}.stdout", "w") as out:
                try:
                    p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=30,
                                       env=env, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
                except subprocess.TimeoutExpired:
                    p = None
            started.append(name)
            if p is None or p.returncode != 0:
                pytest.skip(f"{name} did not start ({'timeout' if p is None else p.returncode})"
                            f"\n{_tail(d / f'{name}.stdout')}\n{_tail(d / f'{name}.log')}")
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline:
            try:
                state = _run(["sinfo", "-h", "-N", "-o", "%T"], timeout=10, env=env).stdout
            except subprocess.TimeoutExpired:
                state = "(sinfo timed out)"
            if state.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"the node did not become idle within 30 s (sinfo: {state.strip()!r})"
                        f"\n{_tail(d / 'slurmctld.log')}\n{_tail(d / 'slurmd.log')}"
                        f"\n{_tail(d / 'munged.log')}")
        yield {"env": env, "dir": d, "cpus": os.cpu_count() or 1}
    finally:
        _stop(d, started)


def _job_state(job_id: str, env: dict) -> tuple[str, str]:
    p = _run(["scontrol", "show", "job", "-o", job_id], timeout=10, env=env)
    state = re.search(r"\bJobState=(\S+)", p.stdout)
    code = re.search(r"\bExitCode=(\S+)", p.stdout)
    return (state.group(1) if state else "?"), (code.group(1) if code else "?")


@pytest.mark.slurm
@pytest.mark.mpi
@pytest.mark.parametrize("launcher,cpus", [(["mpirun"], 1),
                                          (["srun", "--srun-args=--mpi=pmix"], 1),
                                          (["mpirun"], 2)],
                         ids=["mpirun", "srun", "mpirun-2-cpus-per-task"])
def test_real_slurm_dark_job(slurm_cluster, dark_set, tmp_path, launcher, cpus):
    """calib-mpi-submit on a real one-node cluster: the job runs calib-mpi under mpirun or srun
    and writes the constants; the log holds the calib-mpi summary. With 2 cores per task the
    rank runs unbound and uses 2 threads."""
    env = dict(slurm_cluster["env"])
    for key in list(env):
        if key.startswith("CALIB_MPI_"):
            del env[key]
    out = tmp_path / "out"
    conf = dark_set.config(tmp_path / "run.conf", out)
    if cpus > slurm_cluster["cpus"]:
        pytest.skip(f"{cpus} cores per task need a node with as many")
    ranks = min(2, slurm_cluster["cpus"] // cpus)
    # a site without the shipped (Maxwell) defaults: no environment modules here
    fac = tmp_path / "facility"
    fac.mkdir()
    shutil.copy(facility_dir() / "xfel.conf", fac / "xfel.conf")
    (fac / "cluster.conf").write_text("# this site sets nothing\n")
    env["CALIB_MPI_FACILITY_DIR"] = str(fac)
    cluster_conf = tmp_path / "cluster.conf"
    cluster_conf.write_text("# this test's cluster\npartition = debug\n")
    cmd = [sys.executable, "-m", "calib_mpi.submit", str(conf), "--cluster-conf",
           str(cluster_conf), "--nodes", "1", "--tasks-per-node", str(ranks), "--time",
           "00:05:00", "--job-name", "calib-mpi-test", "--cpus-per-task", str(cpus),
           "--launcher", *launcher]
    for k, v in MPI_ENV.items():
        cmd += ["--env", f"{k}={v}"]
    t0 = time.monotonic()
    p = _run(cmd, timeout=60, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    job_id = re.search(r"submitted calib-mpi job (\d+)", p.stdout).group(1)
    log = out / "logs" / f"calib-mpi-{job_id}.out"
    script = out / "logs" / f"calib-mpi-{job_id}.sbatch"
    assert script.is_file()

    deadline = time.monotonic() + 90
    state, code = "?", "?"
    while time.monotonic() < deadline:
        state, code = _job_state(job_id, env)
        if state in TERMINAL:
            break
        time.sleep(0.5)
    else:
        _run(["scancel", job_id], timeout=10, env=env)
        pytest.fail(f"job {job_id} not finished after 90 s (state {state})\n{_tail(log, 40)}"
                    f"\n{_tail(slurm_cluster['dir'] / 'slurmctld.log')}")
    elapsed = time.monotonic() - t0
    text = log.read_text() if log.is_file() else "(no log)"
    assert (state, code) == ("COMPLETED", "0:0"), f"job {job_id}: {state} {code}\n{text}"
    print(f"SLURM job {job_id} ({launcher[0]}): {ranks} rank(s), submitted to finished in "
          f"{elapsed:.1f} s")

    assert f"calib-mpi job {job_id}: {ranks} rank(s) on 1 node(s)" in text
    assert "dark calibration of module(s) 0, 1" in text
    assert f"{ranks} rank(s), {cpus} thread(s) on rank 0" in text
    assert f"calib-mpi job {job_id} finished" in text and "with exit code 0" in text
    for m in (0, 1):
        path = out / "dark" / f"dark_AGIPD{m:02d}_xfel.h5"
        assert f"wrote {path}" in text
        with h5py.File(path, "r") as f:
            assert f.attrs["n_ranks"] == ranks
            assert f["offset"].shape == (3, dark_set.params.n_cells, 512, 128)
    bind = " --bind-to none" if cpus > 1 else ""
    if launcher[0] == "mpirun":
        assert f'mpirun -n "${{SLURM_NTASKS}}"{bind} calib-mpi' in script.read_text()


@pytest.mark.parametrize("launcher,launch", [
    ("mpirun", 'mpirun -n "${SLURM_NTASKS}" --bind-to none'),
    ("srun", "srun --cpus-per-task=2")])
def test_multi_node_full_detector_job(capsys, conf, launcher, launch):
    """The README's 4-node dark job: SLURM's own option spelling, every rank 2 cores."""
    script = dry_run(capsys, conf, "--nodes", "4", "--ntasks-per-node", "16",
                     "--cpus-per-task", "2", "--time", "00:30:00", "--launcher", launcher,
                     "--", "--modules", "0-15")
    sb = sbatch_lines(script)
    assert (sb["nodes"], sb["ntasks-per-node"], sb["cpus-per-task"]) == ("4", "16", "2")
    assert f"{launch} calib-mpi {conf.resolve()} --modules 0-15 || status=$?\n" in script
