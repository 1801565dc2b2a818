"""Submit a calib-mpi job to SLURM: ``calib-mpi-submit run.conf --nodes 4 [-- calib-mpi args]``.

Renders ``jobscripts/calib-mpi.sbatch.template`` with the job's size, time, partition and
account, the virtual environment to activate and the MPI launcher, writes the script next to
the job logs (``<output_dir>/logs`` unless ``--log-dir``) and submits it with ``sbatch``.
``--dry-run`` only prints the script. Cluster defaults (partition, account, module loads, ...)
come from ``facility_specifics/cluster.conf``; the command line overrides them.

The calib-mpi configuration (config file + ``CALIB_MPI_*`` environment + the arguments after
``--``) is validated before anything is submitted, so a typo fails now, not after the queue.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import configargparse

from . import __version__
from .config import facility_dir, parse_config
from .errors import CalibError
from .mpienv import clean_environ
from .resources import data_dir

PROG = "calib-mpi-submit"
LAUNCHERS = ("mpirun", "srun")
SBATCH_TIMEOUT = 60
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SubmitError(Exception):
    """A problem the user can fix (missing file, bad option, no sbatch); printed without
    traceback."""


def default_template() -> Path:
    """The batch-script template shipped with calib-mpi (``calib_mpi/data/jobscripts/``,
    linked as ``jobscripts/`` in the source tree)."""
    return data_dir("jobscripts") / "calib-mpi.sbatch.template"


def default_cluster_conf() -> Path:
    """Cluster defaults: ``facility_specifics/cluster.conf`` (``CALIB_MPI_FACILITY_DIR``
    moves it)."""
    return facility_dir() / "cluster.conf"


def build_parser() -> configargparse.ArgParser:
    """Options of ``calib-mpi-submit``; defaults are read from the cluster file."""
    p = configargparse.ArgParser(
        prog=PROG,
        description="Render a SLURM batch script for calib-mpi and submit it with sbatch.",
        default_config_files=[str(default_cluster_conf())],
        epilog=(
            "Arguments after '--' are passed to calib-mpi, e.g. "
            f"'{PROG} run.conf --nodes 2 -- --modules 0-7 --overwrite'. Options can also be "
            "set as 'key = value' lines in the cluster file (key = option name without '--', "
            "e.g. 'partition = maxwell', 'module_load = mpi/openmpi-x86_64'); the command "
            "line wins."
        ),
    )
    p.add_argument("config", help="calib-mpi config file (key = value)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--cluster-conf", "--cluster_conf", is_config_file=True,
                   help=f"cluster defaults file (read after {default_cluster_conf()})")
    g = p.add_argument_group("job size and place")
    g.add_argument("--nodes", type=int, default=1, help="number of nodes (%(default)s)")
    g.add_argument("--tasks-per-node", "--tasks_per_node", "--ntasks-per-node",
                   "--ntasks_per_node", type=int, default=16,
                   help="MPI ranks per node (%(default)s); consecutive ranks share a node, so "
                   "with 16 or more per node a module's ASICs stay on one node")
    g.add_argument("--cpus-per-task", "--cpus_per_task", type=int, default=1,
                   help="cores per rank (%(default)s); with more than 1 a rank reads in one "
                   "thread while it processes in others (the ranks then run unbound under "
                   "mpirun, each using its share of the node's cores)")
    g.add_argument("--time", default="01:00:00",
                   help="wall-clock limit, HH:MM:SS or D-HH:MM:SS (%(default)s)")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    g.add_argument("--account", help="SLURM account (default: your default account)")
    g.add_argument("--job-name", "--job_name", default="calib-mpi",
                   help="SLURM job name (%(default)s)")
    g.add_argument("--sbatch", action="append", default=None, metavar="OPTION",
                   help="more sbatch options, each written as an '#SBATCH OPTION' line, e.g. "
                   "--sbatch=--exclusive (repeatable; several per value, space-separated)")
    g = p.add_argument_group("environment and launch")
    g.add_argument("--launcher", choices=LAUNCHERS, default="mpirun",
                   help="how ranks are started: mpirun (Open MPI reads the allocation) or "
                   "srun (needs SLURM's PMI support matching the MPI library); %(default)s")
    g.add_argument("--srun-args", "--srun_args", default="",
                   help="options for srun, e.g. '--mpi=pmix'")
    g.add_argument("--module-load", "--module_load", action="append", default=None,
                   metavar="MODULE", help="environment module to load first (repeatable)")
    g.add_argument("--env", action="append", default=None, metavar="KEY=VALUE",
                   help="environment variable exported in the job (repeatable)")
    g.add_argument("--venv", help="virtual environment to activate (default: the one running "
                   f"{PROG}; 'none': activate nothing)")
    g.add_argument("--activate", metavar="LINE",
                   help="shell line that makes calib-mpi available in the job, run after the "
                   "module loads, e.g. 'source /path/to/conda/bin/activate calib' (replaces "
                   "the venv activation unless --venv is given too)")
    g.add_argument("--template", help=f"batch-script template (default: {default_template()})")
    g = p.add_argument_group("output")
    g.add_argument("--log-dir", "--log_dir",
                   help="directory for the script and the log calib-mpi-<jobid>.out "
                   "(default: <output_dir>/logs)")
    g.add_argument("--dry-run", "--dry_run", action="store_true",
                   help="print the batch script, submit nothing")
    return p


def _words(values: list[str] | None) -> list[str]:
    """Flatten repeatable options whose values may hold several shell words."""
    return [w for v in values or [] for w in shlex.split(v)]


def _venv(value: str | None) -> Path | None:
    if value is None:
        return Path(sys.prefix) if sys.prefix != sys.base_prefix else None
    if value.lower() == "none":
        return None
    venv = Path(value).expanduser().resolve()
    if not (venv / "bin" / "activate").is_file():
        raise SubmitError(f"--venv {value}: {venv}/bin/activate not found")
    return venv


def render(template: str, values: Mapping[str, str | None]) -> str:
    """Fill ``@NAME@`` placeholders. Lines starting with ``##`` (template notes) and lines
    with a placeholder whose value is None are left out; an unknown placeholder is an error."""
    out = []
    for line in template.splitlines():
        if line.startswith("##"):
            continue
        names = _PLACEHOLDER.findall(line)
        unknown = [n for n in names if n not in values]
        if unknown:
            raise SubmitError(f"template: unknown placeholder(s) {', '.join(unknown)} in "
                              f"line {line!r}")
        if any(values[n] is None for n in names):
            continue
        out.append(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line).rstrip())
    return "\n".join(out) + "\n"


def job_values(args: configargparse.Namespace, config: Path, calib_args: list[str],
               log_dir: Path) -> dict[str, str | None]:
    """Placeholder values of the template for parsed ``calib-mpi-submit`` options."""
    if args.nodes < 1 or args.tasks_per_node < 1 or args.cpus_per_task < 1:
        raise SubmitError("--nodes, --tasks-per-node and --cpus-per-task must be at least 1")
    if not _SLURM_TIME.fullmatch(args.time):
        raise SubmitError(f"--time {args.time!r}: expected HH:MM:SS, MM, or D-HH:MM:SS")
    exports = []
    for item in _words(args.env):
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            raise SubmitError(f"--env {item!r}: expected KEY=VALUE")
        exports.append(f"export {key}={shlex.quote(value)}")
    if re.search(r"\s", str(log_dir)):
        raise SubmitError(f"log directory {str(log_dir)!r}: SLURM cannot take blanks here")
    modules = _words(args.module_load)
    sbatch = _words(args.sbatch)
    venv = _venv("none" if args.activate and args.venv is None else args.venv)
    cpus = args.cpus_per_task
    if args.launcher == "mpirun":
        # Open MPI would bind each of one or two ranks to a single core
        launch = 'mpirun -n "${SLURM_NTASKS}"' + (" --bind-to none" if cpus > 1 else "")
    else:
        # srun does not pass sbatch's --cpus-per-task on to the tasks by itself
        launch = " ".join(["srun", *([f"--cpus-per-task={cpus}"] if cpus > 1 else []),
                           *shlex.split(args.srun_args)])
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return {
        "HEADER": f"# calib-mpi job script, rendered by {PROG} {__version__} on {now}",
        "JOB_NAME": args.job_name,
        "NODES": str(args.nodes),
        "TASKS_PER_NODE": str(args.tasks_per_node),
        "CPUS_PER_TASK": str(cpus) if cpus > 1 else None,
        "TIME": args.time,
        "PARTITION": args.partition or None,
        "ACCOUNT": args.account or None,
        "LOG_DIR": str(log_dir),
        "EXTRA_SBATCH": "\n".join(f"#SBATCH {o}" for o in sbatch) or None,
        # batch shells are not login shells: make sure 'module' is defined before using it
        "MODULE_LOADS": "\n".join(
            ["type module >/dev/null 2>&1 || source /etc/profile.d/modules.sh"]
            + [f"module load {shlex.quote(m)}" for m in modules]) if modules else None,
        "ACTIVATE": args.activate.strip() if args.activate else None,
        "VENV": shlex.quote(str(venv)) if venv else None,
        "ENV_EXPORTS": "\n".join(exports) or None,
        "LAUNCH": launch,
        "ARGS": shlex.join([str(config), *calib_args]),
    }


def prepare(argv: list[str]) -> tuple[configargparse.Namespace, str, Path]:
    """Parse ``argv``, validate the calib-mpi configuration and render the script.

    Returns (options, script text, log directory).
    """
    if "--" in argv:
        cut = argv.index("--")
        own, calib_args = argv[:cut], argv[cut + 1:]
    else:
        own, calib_args = argv, []
    args = build_parser().parse_args(own)
    config = Path(args.config).expanduser().resolve()
    if not config.is_file():
        raise SubmitError(f"config file {args.config} does not exist")
    try:
        cfg = parse_config([str(config), *calib_args])
    except CalibError as e:
        raise SubmitError(f"{config}: {e}") from e
    log_dir = Path(args.log_dir or cfg.output_dir / "logs").expanduser().resolve()
    template = Path(args.template).expanduser() if args.template else default_template()
    if not template.is_file():
        raise SubmitError(f"batch-script template {template} not found (give one with "
                          "--template)")
    text = render(template.read_text(), job_values(args, config, calib_args, log_dir))
    return args, text, log_dir


def submit(script: Path, timeout: float = SBATCH_TIMEOUT) -> str:
    """Submit ``script`` with ``sbatch --parsable``; returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SubmitError("sbatch not found on PATH: run this on a SLURM login node (or load "
                          f"the slurm module); --dry-run prints the script. It is in {script}")
    # sbatch exports this environment to the job: no MPI runtime variables (see mpienv)
    env = clean_environ()
    try:
        p = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise SubmitError(f"sbatch did not answer within {timeout:.0f} s (is slurmctld "
                          "reachable?)") from e
    if p.returncode != 0:
        raise SubmitError(f"sbatch rejected {script} (exit code {p.returncode}): "
                          f"{p.stderr.strip() or p.stdout.strip()}")
    job_id = p.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SubmitError(f"sbatch answered {p.stdout.strip()!r}, expected a job id")
    return job_id


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for errors the user can fix)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, text, log_dir = prepare(argv)
        if args.dry_run:
            sys.stdout.write(text)
            return 0
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SubmitError(f"cannot create the log directory {log_dir}: {e}") from e
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        script = log_dir / f"calib-mpi-{stamp}-{os.getpid()}.sbatch"
        script.write_text(text)
        job_id = submit(script)
        final = log_dir / f"calib-mpi-{job_id}.sbatch"
        script.replace(final)
        print(f"submitted calib-mpi job {job_id}")
        print(f"  script: {final}")
        print(f"  log:    {log_dir / f'calib-mpi-{job_id}.out'}")
        return 0
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except SubmitError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
