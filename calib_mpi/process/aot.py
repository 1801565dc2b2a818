"""Compile the kernels ahead of time: ``python -m calib_mpi.process.aot [--dir DIR]``.

Builds :mod:`calib_mpi.process._kernels` with ``numba.pycc`` into the extension module
:func:`calib_mpi.process._jit.module_name` (source hash + CPU key) for this machine's CPU, in
the package directory when it is writable, else in the user's cache (see
:func:`calib_mpi.process._jit.search_dirs`), and removes older builds there. Jobs then load it
without importing numba. Run by ``scripts/setup-env.sh``; needs a C compiler.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import _jit


def _host_build_options() -> None:
    """Two settings numba's JIT has and ``numba.pycc`` does not expose: the exported functions
    release the GIL (threads of a rank run kernels in parallel, and the reader thread reads
    meanwhile), and the code uses this CPU's actual feature set (as the JIT does) rather than
    the generic set of its model name."""
    from numba.core import codegen, compiler
    from numba.pycc import compiler as pycc_compiler

    class Flags(compiler.Flags):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True

    pycc_compiler.Flags = Flags
    codegen.AOTCPUCodegen._customize_tm_features = lambda self: codegen.get_host_cpu_features()


def default_dir() -> Path:
    """The first of :func:`_jit.search_dirs` this user can write to."""
    for d in _jit.search_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise SystemExit("calib-mpi kernels: no writable directory among "
                     f"{', '.join(map(str, _jit.search_dirs()))}")


def build(out_dir: Path, verbose: bool = False) -> Path:
    """Compile every kernel of ``_kernels.EXPORTS`` into ``out_dir``; returns the path of
    the module. Older ``_calib_kernels_*`` modules in ``out_dir`` are removed."""
    from numba.pycc import CC

    from . import _kernels as src

    _host_build_options()
    name = _jit.module_name()
    cc = CC(name)
    cc.output_dir = str(out_dir)
    cc.target_cpu = "host"
    cc.verbose = verbose
    for kname, (fn, sig) in src.EXPORTS.items():
        cc.export(kname, sig)(fn)
    out_dir.mkdir(parents=True, exist_ok=True)
    cc.compile()
    built = out_dir / cc.output_file
    for old in out_dir.glob(_jit.PREFIX + "*"):
        if not old.name.startswith(name):
            old.unlink()
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None,
                    help="where to write the module (default: the package directory if "
                         "writable, else ~/.cache/calib-mpi)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    path = build(a.dir or default_dir(), a.verbose)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
