"""Configuration: config file + command line + environment, over per-facility defaults.

Precedence (highest first): command line, ``CALIB_MPI_<KEY>`` environment variables, the
user's config file, ``facility_specifics/<facility>.conf``, built-in defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import configargparse

from . import __version__
from .errors import ConfigError
from .options import ALL_STEPS, FACILITIES, K_ALPHA_KEV, RUNS_NEEDED, add_options
from .resources import data_dir

ENV_PREFIX = "CALIB_MPI_"
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 8: "eight"}


def facility_dir() -> Path:
    """Directory holding ``<facility>.conf``: the one shipped in the package
    (``calib_mpi/data/facility_specifics``, linked as ``facility_specifics/`` in the source tree);
    ``CALIB_MPI_FACILITY_DIR`` overrides it."""
    env = os.environ.get("CALIB_MPI_FACILITY_DIR")
    if env:
        return Path(env)
    return data_dir("facility_specifics")


def parse_int_list(values: list[str] | str | None, key: str) -> list[int]:
    """Parse ``["0-3", "5,7", "9 10"]`` into ``[0, 1, 2, 3, 5, 7, 9, 10]``."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[int] = []
    for item in values:
        for tok in re.split(r"[\s,\[\]]+", str(item)):
            if not tok:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", tok)
            if not m:
                raise ConfigError(
                    f"{key}: cannot read {tok!r}; expected integers or ranges like '0-15'"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            if hi < lo:
                raise ConfigError(f"{key}: range {tok!r} is empty")
            out.extend(range(lo, hi + 1))
    return out


def parse_word_list(values: list[str] | str | None) -> list[str]:
    """Split config/CLI values on whitespace and commas."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [t for item in values for t in re.split(r"[\s,\[\]]+", str(item)) if t]


def _floats(values: list[str] | str, key: str, n: int) -> tuple[float, ...]:
    """Exactly ``n`` numbers from config/CLI values (whitespace or comma separated)."""
    words = parse_word_list(values)
    try:
        out = tuple(float(v) for v in words)
    except ValueError:
        out = ()
    if len(out) != n:
        raise ConfigError(f"{key}: {' '.join(words)} — expected {n} numbers")
    return out


@dataclass(frozen=True)
class Config:
    """Resolved, validated configuration of one calib-mpi job."""

    facility: str
    measurement: str
    input_dir: Path
    runs: tuple[int, ...]
    modules: tuple[int, ...]
    output_dir: Path
    detector: str = "SPB_DET_AGIPD1M-1"
    run_dir_pattern: str = "r{run:04d}"
    file_pattern: str = "RAW-R{run:04d}-AGIPD{module:02d}-S{seq:05d}.h5"
    source_pattern: str = "{detector}/DET/{module}CH0:xtdf"
    steps: tuple[str, ...] = ALL_STEPS
    overwrite: bool = False
    n_cells: int = 0
    interleaved: bool = False
    max_train_gap: int = 1000
    missing_modules: str = "error"
    #: CFEL lab files (facility = cfel; None for xfel), see facility_specifics/cfel.conf
    module_serial: str | None = None
    temperature: str | None = None
    position: str | None = None
    spec: str | None = None
    #: drscs: the current this configuration reads (None while several are configured: see
    #: :meth:`Config.for_current`)
    current: str | None = None
    #: drscs: every configured current, in the configured order (the merge's tie-break)
    currents: tuple[str, ...] = ()
    subdir: str | None = None
    run_names: tuple[str, ...] | None = None
    chunk_frames: int = 1024
    prefetch: bool = True
    node_sharing: bool = True
    threads: int = 0
    report: Path | None = None
    plot: bool = False
    #: pictures: CrystFEL geometry file, or quadrant positions (x, y of quadrants 1-4, pixels),
    #: else the instrument's default positions; axis units px or mm
    geometry: Path | None = None
    quad_pos: tuple[float, ...] | None = None
    plot_units: str = "px"
    export: bool = False
    io_driver: str = "auto"
    offset_sigma: float = 5.0
    noise_sigma: float = 5.0
    offset_hard: tuple[float, float] = (0.0, 16383.0)
    noise_hard: tuple[float, float] = (0.1, 500.0)
    gain_separation_sigma: float = 3.0
    drspc_windows: tuple[int, int, int, int] = (42, 122, 402, 552)
    drspc_residual_limits: tuple[float, float] = (50.0, 50.0)
    drspc_slope_limits: tuple[float, float, float, float] = (4.0, 100.0, 0.12, 3.0)
    xray_target: str = "Cu"
    photon_energy: float = 0.0
    xray_bins: int = 512
    xray_origin_trains: int = 64
    xray_origin_margin: int = 64
    xray_deviation_sigma: float = 5.0
    #: drscs: DrscsParams overrides, (name, value) pairs
    drscs_settings: tuple = ()
    #: drscs: MB per rank for the stored scans; more cells are processed in several passes
    drscs_memory: float = 4000.0
    #: XFEL operating conditions (calib_mpi.conditions): Karabo control domain of the detector,
    #: and values that override the control data (None: from the control data)
    control_domain: str = "SPB_IRU_AGIPD1M1"
    bias_voltage: float | None = None
    memory_cells: int | None = None
    acquisition_rate: float | None = None
    gain_setting: int | None = None
    gain_mode: int | None = None
    integration_time: int | None = None
    #: dark run order: "check" (put right from gain modes or digital levels) or "trust"
    run_order: str = "check"
    #: module -> physical detector unit name (CalCat PDU), for the export
    pdu_names: tuple = ()
    #: the job's operating conditions, found by calib_mpi.runorder.prepare_runs (not a setting)
    conditions: dict = field(default_factory=dict)
    dry_run: bool = False
    verbose: int = 0
    quiet: bool = False
    config_file: str | None = None
    extra: dict = field(default_factory=dict)

    def for_current(self, index: int) -> Config:
        """The configuration of one drscs current: its name, its four runs (XFEL, or lab
        runs given explicitly) and, for lab files, the file-name ``spec`` (the current)."""
        name = self.currents[index]
        runs = self.runs[4 * index:4 * index + 4] if self.runs else ()
        spec = name if self.facility == "cfel" and len(self.currents) > 1 else self.spec
        return dataclasses.replace(self, current=name, runs=runs, spec=spec)

    def drscs_params(self):
        """The drscs processing parameters (``DrscsParams`` with ``drscs_settings``)."""
        from .process.drscs import DrscsParams

        return DrscsParams(**dict(self.drscs_settings))

    def as_dict(self) -> dict:
        """JSON-friendly view (paths as strings) for provenance attributes."""
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults that are true for the command line: a flag (``--overwrite``,
    ``--no_prefetch``) is off unless given, whatever the value it stores; options without a
    built-in default (None) show none; lists are shown as they are written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:  # a flag: store_true/false/const, count, help, version
            if isinstance(action, argparse._CountAction) or "default" in text \
                    or action.dest in ("help", "version"):
                return text
            return f"{text} (default: off)"
        if action.default is None:
            return text
        value = action.default
        if isinstance(value, list | tuple):
            value = " ".join(map(str, value))
        return f"{text} (default: {str(value).replace('%', '%%')})"


def _base_parser(default_files: list[str], add_help: bool = True) -> configargparse.ArgParser:
    p = configargparse.ArgParser(
        prog="calib-mpi",
        add_help=add_help,
        description=(
            "Compute AGIPD calibration constants (offset, noise, gain thresholds, bad pixels) "
            "from raw runs, in parallel with MPI: mpirun -n 16 calib-mpi run.conf"
        ),
        default_config_files=default_files,
        auto_env_var_prefix=ENV_PREFIX,
        formatter_class=HelpFormatter,
        epilog=(
            "Every option can be given in the config file as 'key = value' (e.g. "
            "'modules = 0-15'), on the command line as --key value, or as environment "
            "variable CALIB_MPI_<KEY>. Precedence: command line > environment > config file > "
            "facility_specifics/<facility>.conf > built-in defaults."
        ),
    )
    p.add_argument("config", nargs="?", is_config_file=True, help="config file (key = value)")
    if add_help:
        p.add_argument("--version", action="version", version=f"calib-mpi {__version__}")
    return p


def build_parser(default_files: list[str] | None = None) -> configargparse.ArgParser:
    """The full command-line parser (also used for ``--help``): the options of
    :mod:`calib_mpi.options` over the given default config files."""
    p = _base_parser(default_files or [])
    add_options(p)
    return p


def _facility_file(argv: list[str]) -> str:
    pre = _base_parser([], add_help=False)
    pre.add_argument("--facility", default="xfel")
    known, _ = pre.parse_known_args(argv)
    if known.facility not in FACILITIES:
        raise ConfigError(f"facility: {known.facility!r} is not one of {', '.join(FACILITIES)}")
    path = facility_dir() / f"{known.facility}.conf"
    if not path.is_file():
        raise ConfigError(f"facility defaults {path} not found (facility = {known.facility})")
    return str(path)


def _picture_settings(ns) -> dict:
    """``geometry``, ``quad_pos`` and ``plot_units`` checked (the file exists, 8 numbers,
    not both)."""
    geometry = Path(ns.geometry).expanduser() if ns.geometry else None
    if geometry is not None and not geometry.is_file():
        raise ConfigError(f"geometry: CrystFEL file {geometry} not found")
    quad_pos = _floats(ns.quad_pos, "quad_pos", 8) if ns.quad_pos else None
    if geometry is not None and quad_pos is not None:
        raise ConfigError("geometry and quad_pos both place the modules: give one of them")
    return {"geometry": geometry, "quad_pos": quad_pos, "plot_units": ns.plot_units}


#: facility = cfel: default run names per measurement, in the order that gives their meaning
#: ("" = no run name in the file names: lab xray files are ``..._xray_<spec>_<run:05>...``)
CFEL_RUN_NAMES = {"dark": ("hg", "mg", "lg"), "drspc": tuple(f"r{k}" for k in range(1, 9)),
                  "xray": ("",), "drscs": ("col15", "col26", "col37", "col48")}
_NAME_WORD = re.compile(r"[A-Za-z0-9_.+-]+")


def _cfel_settings(ns, runs: tuple[int, ...], modules: tuple[int, ...]
                   ) -> tuple[tuple[int, ...], tuple[int, ...], dict]:
    """Check the CFEL lab keys; returns runs, modules and the Config fields of the lab files."""
    if ns.measurement not in CFEL_RUN_NAMES:
        raise ConfigError(f"measurement: {ns.measurement!r} is not supported for facility cfel "
                          f"yet (supported: {', '.join(CFEL_RUN_NAMES)})")
    for key in ("plot", "export"):
        if getattr(ns, key):
            raise ConfigError(f"{key}: pictures and pycalibration constants are made for "
                              "European XFEL modules only; leave it out for facility cfel")
    words = {}
    currents = tuple(parse_word_list(ns.current))
    for key in ("module_serial", "temperature", "position", "spec", "subdir"):
        v = getattr(ns, key)
        if v is not None and not _NAME_WORD.fullmatch(str(v)):
            raise ConfigError(f"{key}: {v!r} — expected one directory or file-name word "
                              "(letters, digits, _ . + -)")
        words[key] = str(v) if v else None
    bad = [c for c in currents if not _NAME_WORD.fullmatch(c)]
    if bad or len(set(currents)) != len(currents):
        raise ConfigError(f"current: {list(currents)} — expected distinct directory names "
                          "(letters, digits, _ . + -)")
    if ns.measurement == "xray" and not words["spec"]:
        words["spec"] = ns.xray_target  # lab xray names carry the target: ..._xray_Cu_...
    if ns.measurement == "drscs" and not currents:
        raise ConfigError("current: drscs lab runs sit in a current sub-directory "
                          "(<temperature>/drscs/<current>/); give one or more, e.g. current = "
                          "itestc20 itestc80 itestc150")
    if ns.measurement == "drscs" and len(currents) > 1 and words["spec"]:
        raise ConfigError(f"spec: {words['spec']!r} — with several currents the file names "
                          "carry each current (..._drscs_<current>_col15_...); leave spec out")
    if ns.measurement == "drscs" and not words["spec"] and len(currents) == 1:
        words["spec"] = currents[0]  # lab drscs names carry the current: ..._drscs_itestc150_
    if currents and ns.measurement != "drscs":
        raise ConfigError(f"current: {' '.join(currents)!r} — only drscs runs sit in a current "
                          f"sub-directory; leave it out for measurement {ns.measurement}")
    if len(modules) > 1:
        raise ConfigError(f"modules: {list(modules)} — facility cfel calibrates one module per "
                          "job (named by module_serial); give one number or none")
    names = tuple(parse_word_list(ns.run_names)) or CFEL_RUN_NAMES[ns.measurement]
    n_runs, meaning = RUNS_NEEDED[ns.measurement]
    if n_runs is not None and len(names) != n_runs:
        raise ConfigError(
            f"run_names: {ns.measurement} needs exactly {NUMBER_WORDS.get(n_runs, n_runs)} "
            f"run name(s) ({meaning}), got {len(names)}: {list(names)}")
    bad = [n for n in names if (n or ns.measurement != "xray") and not _NAME_WORD.fullmatch(n)]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"run_names: {list(names)} — expected distinct file-name words")
    n_sets = max(len(currents), 1)
    if runs and len(runs) != len(names) * n_sets:
        per = " per current" if ns.measurement == "drscs" else ""
        raise ConfigError(f"runs: {list(runs)} — facility cfel needs one run number per run "
                          f"name ({' '.join(names)}){per}, or none to find them from the file "
                          "names")
    if not 1 <= ns.n_cells <= 352:
        raise ConfigError(f"n_cells: {ns.n_cells} — facility cfel needs the memory cells per "
                          "train, 1..352 (352 in burst mode; facility default 352)")
    return runs, modules or (0,), dict(words, run_names=names, currents=currents,
                                       current=currents[0] if len(currents) == 1 else None)


def _xfel_currents(ns, runs: tuple[int, ...]) -> dict:
    """XFEL drscs: four runs per current, named by ``current`` (default current1, ...)."""
    names = tuple(parse_word_list(ns.current))
    if not runs or len(runs) % 4:
        raise ConfigError(f"runs: drscs needs four runs (col15, col26, col37, col48) per "
                          f"current, got {len(runs)}: {list(runs)}")
    n = len(runs) // 4
    if not names:
        names = tuple(f"current{i + 1}" for i in range(n))
    if len(names) != n or len(set(names)) != n:
        raise ConfigError(f"current: {list(names)} — expected {n} distinct name(s), one per "
                          f"four runs (runs = {list(runs)})")
    return {"currents": names, "current": names[0] if n == 1 else None}


def _drscs_settings(values: list[str] | str | None) -> tuple:
    """``name=value`` words -> validated ``DrscsParams`` overrides (name, value) pairs."""
    words = parse_word_list(values)
    if not words:  # no import of the drscs processing (and scipy) for other jobs
        return ()
    from .process.drscs import DrscsParams

    fields = {f.name: f for f in dataclasses.fields(DrscsParams)}
    out = []
    for word in words:
        name, eq, text = word.partition("=")
        if not eq or name not in fields:
            raise ConfigError(f"drscs: {word!r} — expected name=value with a name of "
                              f"{', '.join(fields)}")
        default = getattr(DrscsParams(), name)
        kinds = [type(v) for v in default] if isinstance(default, tuple) else [type(default)]
        texts = text.split("/")
        try:
            parsed = [k(t) for k, t in zip(kinds, texts, strict=True)]
        except ValueError:
            parsed = None
        if parsed is None:
            raise ConfigError(f"drscs: {word!r} — {name} needs {len(kinds)} number(s) "
                              "separated by '/' like its default "
                              f"{'/'.join(map(str, default)) if len(kinds) > 1 else default}")
        value = tuple(parsed) if isinstance(default, tuple) else parsed[0]
        out.append((name, value))
    return tuple(out)


def _pdu_names(values: list[str] | None, modules: tuple[int, ...]) -> tuple:
    """``pdu_names`` as ((module, name), ...): names in module order or ``module:name``."""
    words = parse_word_list(values)
    if not words:
        return ()
    if all(":" in w for w in words):
        pairs = []
        for w in words:
            m, _, name = w.partition(":")
            if not m.isdigit() or not name:
                raise ConfigError(f"pdu_names: {w!r} — expected module:name, e.g. "
                                  "0:AGIPD_SIV1_AGIPDV11_M305")
            pairs.append((int(m), name))
        return tuple(sorted(pairs))
    if any(":" in w for w in words) or len(words) != len(modules):
        raise ConfigError(f"pdu_names: {len(words)} name(s) for modules {list(modules)}; give "
                          "one name per module in the order of modules, or module:name pairs")
    return tuple(zip(modules, words, strict=True))


#: options copied into the Config as they were parsed
_AS_PARSED = (
    "facility", "measurement", "run_dir_pattern", "file_pattern", "source_pattern",
    "overwrite", "n_cells", "interleaved", "max_train_gap", "missing_modules", "chunk_frames",
    "prefetch", "node_sharing", "threads", "plot", "export", "io_driver", "offset_sigma",
    "noise_sigma", "gain_separation_sigma", "xray_target", "xray_bins", "xray_origin_trains",
    "xray_origin_margin", "xray_deviation_sigma", "drscs_memory", "control_domain",
    "bias_voltage", "memory_cells", "acquisition_rate", "gain_setting", "gain_mode",
    "integration_time", "run_order", "dry_run", "verbose", "quiet",
)


def _namespace(argv: list[str]) -> argparse.Namespace:
    """Parse the command line over the config file and the facility defaults."""
    parser = build_parser([_facility_file(argv)])
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:
        if e.code == 0:
            raise
        raise ConfigError("invalid command line or config file (see the message above)") from e
    if ns.config and not Path(ns.config).is_file():
        raise ConfigError(f"config file {ns.config} does not exist")
    required = ("input_dir", "runs", "modules", "output_dir")
    if ns.facility == "cfel":
        required = ("input_dir", "output_dir", "module_serial", "temperature", "position")
    missing = [k for k in required if not getattr(ns, k)]
    if missing:
        raise ConfigError(
            "missing required setting(s): "
            + ", ".join(missing)
            + " (give them in the config file as 'key = value' or as --key value)"
        )
    return ns


def _run_set(ns: argparse.Namespace) -> tuple[tuple[int, ...], tuple[int, ...], dict]:
    """Runs and modules checked against the measurement; XFEL drscs: the currents' runs."""
    runs = tuple(parse_int_list(ns.runs, "runs"))
    modules = tuple(parse_int_list(ns.modules, "modules"))
    if any(m > 15 for m in modules):
        raise ConfigError(f"modules: {modules} — AGIPD1M modules are 0..15")
    if len(set(modules)) != len(modules):
        raise ConfigError(f"modules: {modules} lists a module twice")
    n_runs, meaning = RUNS_NEEDED[ns.measurement]
    xfel_currents: dict = {}
    if ns.facility == "xfel" and ns.measurement == "drscs":
        xfel_currents = _xfel_currents(ns, runs)
    elif ns.facility == "xfel" and n_runs is not None and len(runs) != n_runs:
        raise ConfigError(
            f"runs: {ns.measurement} needs exactly {NUMBER_WORDS.get(n_runs, n_runs)} run(s) "
            f"({meaning}), got {len(runs)}: {list(runs)}"
        )
    if ns.facility == "xfel" and ns.current and ns.measurement != "drscs":
        raise ConfigError(f"current: only drscs has currents; leave it out for measurement "
                          f"{ns.measurement}")
    if len(set(runs)) != len(runs):
        twice = sorted({r for r in runs if runs.count(r) > 1})
        raise ConfigError(f"runs: {list(runs)} — run(s) {twice} given more than once; each "
                          "run of a job must be a different run")
    return runs, modules, xfel_currents


def _steps(ns: argparse.Namespace) -> tuple[str, ...]:
    steps = tuple(parse_word_list(ns.steps))
    bad = [s for s in steps if s not in ALL_STEPS]
    if bad:
        raise ConfigError(f"steps: unknown step(s) {bad}; expected a subset of {ALL_STEPS}")
    return tuple(s for s in ALL_STEPS if s in steps)


def _performance(ns: argparse.Namespace) -> None:
    if ns.chunk_frames < 1:
        raise ConfigError("chunk_frames must be at least 1")
    if ns.threads < 0:
        raise ConfigError("threads must be 0 (automatic) or more")


def _measurement_parameters(ns: argparse.Namespace) -> dict:
    """drspc, xray and drscs parameters checked and converted."""
    w = tuple(int(v) for v in _floats(ns.drspc_windows, "drspc_windows", 4))
    if w != _floats(ns.drspc_windows, "drspc_windows", 4) or w[0] >= w[1] or w[2] >= w[3]:
        raise ConfigError(f"drspc_windows: {w} — expected four integer train steps t0 t1 t0 t1 "
                          "(high, medium gain) with t0 < t1")
    residual = _floats(ns.drspc_residual_limits, "drspc_residual_limits", 2)
    sl = _floats(ns.drspc_slope_limits, "drspc_slope_limits", 4)
    if sl[0] >= sl[1] or sl[2] >= sl[3]:
        raise ConfigError(f"drspc_slope_limits: {sl} — expected low < high for both gains")
    if ns.xray_bins < 16:
        raise ConfigError(f"xray_bins: {ns.xray_bins} — at least 16 bins are needed")
    if ns.xray_origin_trains < 1:
        raise ConfigError("xray_origin_trains must be at least 1")
    if ns.drscs_memory <= 0:
        raise ConfigError("drscs_memory must be positive (MB per rank)")
    if ns.photon_energy < 0:
        raise ConfigError("photon_energy must be positive (or 0: from xray_target)")
    return {"drspc_windows": w, "drspc_residual_limits": residual, "drspc_slope_limits": sl,
            "photon_energy": ns.photon_energy or K_ALPHA_KEV[ns.xray_target],
            "drscs_settings": _drscs_settings(ns.drscs),
            "offset_hard": tuple(ns.offset_hard), "noise_hard": tuple(ns.noise_hard)}


def _export_names(ns: argparse.Namespace, modules: tuple[int, ...]) -> tuple:
    """``pdu_names`` checked; an XFEL export needs one for every module."""
    pdu_names = _pdu_names(ns.pdu_names, modules)
    if ns.export and ns.facility == "xfel" and \
            (lost := [m for m in modules if m not in dict(pdu_names)]):
        raise ConfigError(f"export: no physical detector unit (CalCat PDU) name for module(s) "
                          f"{lost}; give pdu_names (one per module, e.g. pdu_names = "
                          "AGIPD_SIV1_AGIPDV11_M305 ...) — calib-mpi does not invent them")
    return pdu_names


def parse_config(argv: list[str]) -> Config:
    """Parse and validate the configuration; raises :class:`ConfigError` with the key at fault."""
    ns = _namespace(argv)
    runs, modules, cfel = _run_set(ns)
    steps = _steps(ns)
    _performance(ns)
    params = _measurement_parameters(ns)
    pdu_names = _export_names(ns, modules)
    if ns.facility == "cfel":
        runs, modules, cfel = _cfel_settings(ns, runs, modules)
    return Config(
        **{k: getattr(ns, k) for k in _AS_PARSED},
        input_dir=Path(ns.input_dir),
        runs=runs,
        modules=modules,
        output_dir=Path(ns.output_dir),
        detector=ns.detector or "SPB_DET_AGIPD1M-1",
        steps=steps,
        report=Path(ns.report) if ns.report else None,
        **_picture_settings(ns),
        **params,
        pdu_names=pdu_names,
        config_file=ns.config,
        **cfel,
    )
