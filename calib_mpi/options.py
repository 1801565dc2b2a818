"""Every option of ``calib-mpi``, declared once, grouped by concern.

Each :class:`OptionGroup` is one section of ``--help`` and belongs to one concern: ``input``
(what to compute and where the raw data are: run set, file layout, lab files, operating
conditions), ``output`` (results, pictures, export), ``measurement`` (parameters of one
measurement's processing), ``performance`` (reading, threads, I/O driver) and ``messages``.
:func:`add_options` builds the parser from them (:func:`calib_mpi.config.build_parser`);
:func:`calib_mpi.config.parse_config` checks the values and makes the ``Config``. The SLURM
settings (the cluster concern) are ``calib-mpi-submit``'s (:mod:`calib_mpi.submit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import configargparse

FACILITIES = ("xfel", "cfel")
#: measurement -> (number of runs it needs or None, what the runs are); one entry per recipe in
#: calib_mpi.recipes (kept here so that parsing a config never imports MPI: a process that
#: initialised MPI passes its MPI environment on to the jobs it submits)
RUNS_NEEDED = {
    "dark": (3, "high, medium, low gain"),
    "drspc": (8, "row groups r1..r8"),
    "drscs": (4, "column groups col15, col26, col37, col48, per current"),
    "xray": (1, "fluorescence run"),
}
MEASUREMENTS = tuple(RUNS_NEEDED)
ALL_STEPS = ("preprocess", "gather", "process", "join")
#: fluorescence target -> K-alpha photon energy (keV), for ``photon_energy = 0``
K_ALPHA_KEV = {"Cu": 8.04, "Mo": 17.44}


class Option:
    """One option: its names (``--key``, ``--key-with-dashes``) and ``add_argument``'s
    keywords (default, type, choices, help ...)."""

    def __init__(self, names: tuple[str, ...], **kwargs) -> None:
        self.names = names
        self.kwargs = kwargs


@dataclass(frozen=True)
class OptionGroup:
    """A section of ``--help``: its title, its concern and its options, in order."""

    title: str
    concern: str
    options: tuple[Option, ...]


JOB = OptionGroup("what to compute", "input", (
    Option(("--facility",), choices=FACILITIES, default="xfel",
           help="facility defaults to load from facility_specifics/<facility>.conf"),
    Option(("--measurement",), choices=MEASUREMENTS, default="dark",
           help="kind of calibration run set"),
    Option(("--input_dir", "--input-dir"),
           help="XFEL: directory holding the run folders rNNNN/; CFEL: holding <temperature>/"),
    Option(("--runs", "--run"), nargs="+",
           help="run numbers; dark: exactly three, high, medium, low gain (see run_order); "
                "drspc: exactly eight, in the order r1..r8 (run k injects chip rows k mod "
                "8); xray: one"),
    Option(("--modules", "--module"), nargs="+",
           help="module numbers, e.g. '0 3' or '0-15'"),
    Option(("--detector",),
           help="XFEL detector source prefix, e.g. SPB_DET_AGIPD1M-1"),
    Option(("--n_cells", "--n-cells"), type=int, default=0,
           help="number of memory cells of the constants (0: max(cellId)+1 of all files); "
                "CFEL: memory cells per train, a train is 2 x n_cells frames (facility "
                "default 352)"),
    Option(("--interleaved",), action="store_true",
           help="2017 XFEL mode: analog and digital as separate frames in data[:, 0] (even "
                "cellId analog, odd digital)"),
    Option(("--max_train_gap", "--max-train-gap"), type=int, default=1000,
           help="train IDs in small groups more than this many trains away from the rest of "
                "the run are bogus and left out"),
    Option(("--missing_modules", "--missing-modules"),
           choices=("error", "skip"), default="error",
           help="a module without files in a run: stop with an error, or leave the module "
                "out of the job and report it"),
))


OUTPUT = OptionGroup("output", "output", (
    Option(("--output_dir", "--output-dir"),
           help="directory for the results"),
    Option(("--steps",), nargs="+", default=list(ALL_STEPS),
           help=f"steps to run, a subset of {' '.join(ALL_STEPS)}"),
    Option(("--overwrite",), action="store_true",
           help="replace existing results (default: refuse)"),
    Option(("--plot",), action="store_true",
           help="after the run, write PNG maps and histograms to "
                "<output_dir>/<measurement>/plots (see calib-mpi plot --help)"),
    Option(("--geometry",),
           help="pictures: CrystFEL .geom file placing the modules (default: quadrant "
                "positions)"),
    Option(("--quad_pos", "--quad-pos"), nargs="+", metavar="XY",
           help="pictures: x y of the first pixel of quadrants 1-4 (modules 0, 4, 8, 12) in "
                "pixels, x to the left and y up along the beam, 8 numbers (default: the "
                "instrument's, from the detector name)"),
    Option(("--plot_units", "--plot-units"), choices=("px", "mm"), default="px",
           help="pictures: axis units of the full-detector images"),
    Option(("--export",), action="store_true",
           help="after the run, write CalCat-ready constants to "
                "<output_dir>/<measurement>/pycalibration; needs pdu_names (see calib-mpi "
                "export --help)"),
    Option(("--dry_run", "--dry-run"), action="store_true",
           help="print the plan (files, trains, cells, rank assignment) and stop"),
))


FILE_LAYOUT = OptionGroup("file layout (facility defaults)", "input", (
    Option(("--run_dir_pattern", "--run-dir-pattern"), default="r{run:04d}",
           help="run folder name inside input_dir"),
    Option(("--file_pattern", "--file-pattern"),
           default="RAW-R{run:04d}-AGIPD{module:02d}-S{seq:05d}.h5",
           help="raw file name of one module and sequence"),
    Option(("--source_pattern", "--source-pattern"), default="{detector}/DET/{module}CH0:xtdf",
           help="detector source name"),
))


CFEL_FILES = OptionGroup("CFEL lab files (facility = cfel)", "input", (
    Option(("--module_serial", "--module-serial"),
           help="module serial as in the file names, e.g. M304 (names the output file)"),
    Option(("--temperature",),
           help="temperature directory in input_dir, e.g. temperature_m20C"),
    Option(("--position",),
           help="slot in the lab stand as in the file names, e.g. m2"),
    Option(("--spec",),
           help="file-name word after the measurement, e.g. tint150ns (dark integration "
                "time); leave out when the names have none; xray: default xray_target (Cu, "
                "Mo)"),
    Option(("--current", "--currents"), nargs="+",
           help="drscs only: the currents, e.g. 'itestc20 itestc80 itestc150' (lab: their "
                "sub-directories); several are processed in parallel by rank groups and "
                "merged per (cell, pixel); the order breaks ties in the merge"),
    Option(("--subdir",),
           help="optional sub-directory below <measurement>/, e.g. burst"),
    Option(("--run_names", "--run-names"), nargs="+",
           help="run names in the file names, in order; dark: high, medium, low gain "
                "(default hg mg lg); drspc: row groups 0..7 (default r1 .. r8); xray: none "
                "by default (names ..._xray_<spec>_<run:05>...); run numbers come from runs "
                "or from the file names"),
))


PERFORMANCE = OptionGroup("performance", "performance", (
    Option(("--chunk_frames", "--chunk-frames"), type=int, default=1024,
           help="frames per read slab (whole trains, at least one); memory per rank is about "
                "1 MB per frame (two read buffers, send and receive buffers)"),
    Option(("--threads",), type=int, default=0,
           help="threads per rank processing different ASICs at once (dark); 0: the rank's "
                "share of the cores it may run on (mpirun binds each of one or two ranks to "
                "one core unless told otherwise, e.g. --bind-to none; unbound ranks share "
                "the node's cores)"),
    Option(("--report",),
           help="write timings (per step), bytes read and peak memory per rank as JSON here"),
    Option(("--no_prefetch", "--no-prefetch"), action="store_false", dest="prefetch",
           help="do not read the next slab in a background thread while computing"),
    Option(("--no_node_sharing", "--no-node-sharing"),
           action="store_false", dest="node_sharing",
           help="send ASIC blocks to ranks of the same node by Alltoallv instead of letting "
                "them read the blocks from the reader's buffer (MPI shared memory)"),
    Option(("--io_driver", "--io-driver"), choices=("auto", "mpio", "posix"), default="auto",
           help="HDF5 driver: mpio (parallel HDF5), posix (serial), auto (mpio if h5py has "
                "MPI support)"),
))


BAD_PIXELS = OptionGroup("bad pixels (dark)", "measurement", (
    Option(("--offset_sigma", "--offset-sigma"), type=float, default=5.0,
           help="flag offsets further than this many robust sigmas from the module median "
                "per (gain, cell)"),
    Option(("--noise_sigma", "--noise-sigma"), type=float, default=5.0,
           help="same for the noise"),
    Option(("--offset_hard", "--offset-hard"), type=float, nargs=2, default=[0.0, 16383.0],
           help="hard [low, high] limits of the offset (ADU)"),
    Option(("--noise_hard", "--noise-hard"), type=float, nargs=2, default=[0.1, 500.0],
           help="hard [low, high] limits of the noise (ADU)"),
    Option(("--gain_separation_sigma", "--gain-separation-sigma"), type=float, default=3.0,
           help="minimum (gl[g+1]-gl[g])/(sd[g]+sd[g+1]) between gain levels"),
))


DRSPC = OptionGroup("pulsed capacitor (drspc)", "measurement", (
    Option(("--drspc_windows", "--drspc-windows"), nargs="+", default=[42, 122, 402, 552],
           help="fit windows [t0, t1) of high and medium gain: t0 t1 t0 t1, in train steps "
                "(train ID minus the run's first train ID)"),
    Option(("--drspc_residual_limits", "--drspc-residual-limits"),
           nargs="+", default=[50.0, 50.0],
           help="largest residual RMS of the high and medium gain fits (ADU)"),
    Option(("--drspc_slope_limits", "--drspc-slope-limits"),
           nargs="+", default=[4.0, 100.0, 0.12, 3.0],
           help="accepted slopes [low, high] of the high and medium gain fits (ADU per train "
                "step)"),
))


XRAY = OptionGroup("fluorescence (xray)", "measurement", (
    Option(("--xray_target", "--xray-target"), choices=tuple(K_ALPHA_KEV), default="Cu",
           help="fluorescence target; sets the photon energy (K-alpha: Cu 8.04, Mo 17.44 keV)"),
    Option(("--photon_energy", "--photon-energy"), type=float, default=0.0,
           help="photon energy in keV for gain_adu_per_kev (0: K-alpha of xray_target)"),
    Option(("--xray_bins", "--xray-bins"), type=int, default=512,
           help="1-ADU histogram bins per (cell, pixel), from the histogram origin upwards; "
                "memory per ASIC is cells x 4096 x bins x 4 bytes"),
    Option(("--xray_origin_trains", "--xray-origin-trains"), type=int, default=64,
           help="the histogram origin of each (cell, pixel) is the lower quartile of its "
                "values in the module's first this many trains with data, minus "
                "xray_origin_margin"),
    Option(("--xray_origin_margin", "--xray-origin-margin"), type=int, default=64,
           help="ADU kept below the lower quartile for the histogram origin"),
    Option(("--xray_deviation_sigma", "--xray-deviation-sigma"), type=float, default=5.0,
           help="flag photon spacings further than this many robust sigmas from the ASIC's "
                "median per cell (FF_GAIN_DEVIATION)"),
))


DRSCS = OptionGroup("current source (drscs)", "measurement", (
    Option(("--drscs",), nargs="+",
           help="processing parameters as name=value, e.g. 'safety_factor=700 min_flat=5' "
                "(names of calib_mpi.process.drscs.DrscsParams; several numbers as 7/30/30)"),
    Option(("--drscs_memory", "--drscs-memory"), type=float, default=4000.0,
           help="MB per rank for the stored scans (steps x cells x 4096 x 5 bytes per ASIC); "
                "when the cells need more, they are processed in several passes over the data"),
))


CONDITIONS = OptionGroup(
    "operating conditions (XFEL control data; give a value to override)", "input", (
    Option(("--control_domain", "--control-domain"), default="SPB_IRU_AGIPD1M1",
           help="Karabo control domain of the detector: FPGA composite device "
                "<domain>/MDL/FPGA_COMP, bias supply <domain minus last character>/PSC/HV "
                "(facility default per instrument)"),
    Option(("--bias_voltage", "--bias-voltage"), type=float,
           help="sensor bias voltage (V)"),
    Option(("--memory_cells", "--memory-cells"), type=int,
           help="memory cells setting (bunchStructure.nPulses)"),
    Option(("--acquisition_rate", "--acquisition-rate"), type=float,
           help="acquisition rate (MHz)"),
    Option(("--gain_setting", "--gain-setting"), type=int, choices=(0, 1),
           help="gain setting (CDS mode)"),
    Option(("--gain_mode", "--gain-mode"), type=int, choices=(0, 1, 2, 3),
           help="gain mode of every run: 0 adaptive, 1/2/3 fixed high/medium/low"),
    Option(("--integration_time", "--integration-time"), type=int,
           help="integration time (FPGA clock units; AGIPD default 12)"),
    Option(("--run_order", "--run-order"), choices=("check", "trust"), default="check",
           help="check the order of the runs and put them right, or trust the order "
                "given: dark runs by gain (gain modes or digital levels), XFEL drspc/drscs "
                "runs by the pixel group each injects (from their data)"),
    Option(("--pdu_names", "--pdu-names"), nargs="+",
           help="physical detector unit (CalCat PDU) of each module for the export: names in "
                "the order of modules, or module:name pairs"),
))


MESSAGES = OptionGroup("messages", "messages", (
    Option(("-v", "--verbose"), action="count", default=0,
           help="more log output"),
    Option(("-q", "--quiet"), action="store_true",
           help="errors only"),
))


#: the groups in the order of ``--help``
GROUPS = (JOB, OUTPUT, FILE_LAYOUT, CFEL_FILES, PERFORMANCE, BAD_PIXELS, DRSPC, XRAY, DRSCS,
          CONDITIONS, MESSAGES)


def add_options(parser: configargparse.ArgParser, groups: tuple[OptionGroup, ...] = GROUPS
                ) -> None:
    """Add the options of ``groups`` to ``parser``, one argument group each."""
    for group in groups:
        g = parser.add_argument_group(group.title)
        for opt in group.options:
            g.add_argument(*opt.names, **opt.kwargs)
