"""Build the Cython extensions; all other metadata lives in pyproject.toml.

Environment switches:
  FMCLI_NO_OPENMP=1  build without OpenMP (training then runs on one thread)
  FMCLI_NATIVE=1     add -march=native (faster, but the build is not portable)
  FMCLI_DEBUG=1      bounds checks on, -O0 -g
"""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "").strip() not in ("", "0", "false", "no")


compile_args = ["-O3"]
link_args = []
if sys.platform != "win32":
    # -fno-math-errno lets sqrt vectorize; NaN and inf checks stay intact.
    compile_args += ["-std=c11", "-fno-strict-aliasing", "-fno-math-errno"]
    # No multiply-add contraction (GCC's default in C11 mode, stated here for
    # every compiler): the loops of every SIMD level, -march=native builds
    # included, must round exactly as the SSE loops do.
    compile_args.append("-ffp-contract=off")
if _flag("FMCLI_DEBUG"):
    compile_args = ["-O0", "-g"]
if _flag("FMCLI_NATIVE"):
    compile_args.append("-march=native")
if not _flag("FMCLI_NO_OPENMP") and sys.platform != "win32":
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

directives = {
    "language_level": 3,
    "boundscheck": _flag("FMCLI_DEBUG"),
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"fmcli._core.{name}",
        [f"fmcli/_core/{name}.pyx"],
        include_dirs=["fmcli/_core"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for name in ("_parse", "_kernels")
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
