"""Numba source of the compiled kernels, one module per measurement (imported only to compile
them: by :mod:`calib_mpi.process.aot` ahead of time, or by :mod:`calib_mpi.process._jit` just
in time when no prebuilt module matches these files).

An exported kernel is a plain Python function listed in :data:`EXPORTS` with its one signature
(the AOT module is compiled for exactly these types; the JIT path compiles the same function
for the types it is called with). Helpers it calls are ``@njit`` functions of its module.
Adding a kernel: write it in its measurement's module, add it to :data:`EXPORTS`, call it
through ``_jit.kernel(name)`` with a numpy fallback; ``python -m calib_mpi.process.aot`` (run
by ``scripts/setup-env.sh``) then builds it in. Any change to a file of this package changes
their hash, so a prebuilt module of an older version is ignored (the JIT path is used) until
rebuilt.
"""

from .dark import dark_sums
from .drscs import drscs_scan
from .drspc import drspc_sums
from .xray import xray_hist, xray_peaks, xray_refine

_U64_3D = "uint64[:, :, ::1]"
# analog of any strides (an ASIC's block of the slab, a view), counts uint32 or uint16
_XRAY_SIG = ("void(uint16[:, :, :], int64[::1], int64[::1], int64[::1], int32[:, :, ::1], "
             "{}[:, ::1], int64[::1], int64[::1])")

#: kernel name -> (function, signature of the ahead-of-time build)
EXPORTS = {
    "dark_sums": (dark_sums, "void(uint16[:, :, :, ::1], int64, int64, int64[::1], int64[::1], "
                             f"int64[::1], {_U64_3D}, {_U64_3D}, {_U64_3D}, {_U64_3D})"),
    "xray_hist": (xray_hist, _XRAY_SIG.format("uint32")),
    "xray_hist_u16": (xray_hist, _XRAY_SIG.format("uint16")),
    "drspc_sums": (drspc_sums, "void(uint16[:, :, :], uint16[:, :, :], int64[::1], int64[::1], "
                               "int64[:, ::1], int64[::1], int64[:, :, :, ::1])"),
    "drscs_scan": (drscs_scan, "void(uint16[:, ::1], uint16[:, ::1], boolean[:, ::1], "
                               "float64[::1], float64[::1], int64[::1], float64[:, ::1], "
                               "int64[:, ::1])"),
    "xray_refine": (xray_refine, "void(float64[:, ::1], float64[::1], float64[::1], "
                                 "float64[::1], float64, int64, float64[:, ::1])"),
    "xray_peaks": (xray_peaks, "void(int64[:, ::1], int64, float64, float64, float64, "
                               "int64[:, ::1])"),
}
