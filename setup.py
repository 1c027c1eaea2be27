"""Build script for cybn's compiled parts.

What it builds
--------------
* ``cybn._openmp``: the OpenMP shim (thread-count helpers, serial fallback).
* ``cybn._kernels.<isa>``: the same kernels (``cybn/_kernels/*.pxi``, some rendered from
  ``*.pxi.tp`` templates first) compiled once per
  instruction set. ``baseline`` runs on any x86-64 (SSE2); on x86-64 ``avx2`` and ``avx512``
  are built as well and ``cybn._kernels`` picks the widest one the CPU supports at import
  time (NumPy's CPU feature detection). Floating-point contraction is off in every variant
  (``-ffp-contract=off``), so all variants give bitwise identical results.

Environment variables
---------------------
CYBN_DISABLE_OPENMP=1   build without OpenMP (serial kernels).
CYBN_ISAS=baseline,avx2 restrict the instruction-set variants built.
CYBN_MARCH_NATIVE=1     additionally compile every variant with ``-march=native`` (opt-in;
                        the result only runs on CPUs like the build machine's).
CYBN_DEBUG=1            turn Cython's bounds checking back on and build with ``-O0 -g``.
CYBN_SANITIZE=1         build with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

import glob
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

DIRECTIVES = dict(
    boundscheck=False,
    wraparound=False,
    initializedcheck=False,
    cdivision=True,
    language_level=3,
)

ISA_FLAGS = {
    "baseline": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-mbmi2"],
    "avx512": ["-mavx512f", "-mavx512cd", "-mavx512bw", "-mavx512dq", "-mavx512vl",
               "-mavx2", "-mfma", "-mf16c", "-mbmi2", "-mprefer-vector-width=512"],
}


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def compiler_accepts(flags, source, link_flags=()):
    """Compile and link ``source`` with the C compiler; True when it works."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = [cc, *flags, src, "-o", os.path.join(tmp, "probe"), *link_flags]
        try:
            result = subprocess.run(cmd, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def openmp_flags():
    if env_flag("CYBN_DISABLE_OPENMP"):
        warnings.warn("cybn: OpenMP disabled by CYBN_DISABLE_OPENMP; kernels run serially",
                      stacklevel=2)
        return [], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for cflags, lflags in candidates:
        if compiler_accepts(cflags, OPENMP_PROBE, lflags):
            return cflags, lflags
    warnings.warn("cybn: the C compiler does not support OpenMP; building serial kernels",
                  stacklevel=2)
    return [], []


def isa_variants():
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return ["baseline"]
    wanted = os.environ.get("CYBN_ISAS", "baseline,avx2,avx512").split(",")
    variants = ["baseline"]
    for isa in ("avx2", "avx512"):
        if isa in wanted and compiler_accepts(ISA_FLAGS[isa], "int main(void){return 0;}\n"):
            variants.append(isa)
    return variants


def build_extensions():
    omp_cflags, omp_lflags = openmp_flags()
    if env_flag("CYBN_DEBUG"):
        base = ["-O0", "-g"]
        DIRECTIVES["boundscheck"] = True
        DIRECTIVES["wraparound"] = True
        DIRECTIVES["initializedcheck"] = True
    else:
        base = ["-O3"]
    base += ["-ffp-contract=off", "-fno-math-errno"]
    link = list(omp_lflags)
    if env_flag("CYBN_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        base += san
        link += san
    native = ["-march=native"] if env_flag("CYBN_MARCH_NATIVE") else []
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    include = [np.get_include(), os.path.join(HERE, "cybn"),
               os.path.join(HERE, "cybn", "_kernels")]

    extensions = [
        Extension("cybn._openmp", ["cybn/_openmp.pyx"], include_dirs=include,
                  extra_compile_args=base + omp_cflags, extra_link_args=link,
                  define_macros=macros)
    ]
    # the C headers the kernels include: a changed header rebuilds every variant
    kernel_headers = sorted(glob.glob(os.path.join("cybn", "_kernels", "*.h")))
    config = {"openmp_cflags": omp_cflags, "openmp_ldflags": omp_lflags, "variants": {}}
    for isa in isa_variants():
        flags = base + omp_cflags + ISA_FLAGS[isa] + native
        extensions.append(
            Extension(f"cybn._kernels.{isa}", [f"cybn/_kernels/{isa}.pyx"], include_dirs=include,
                      extra_compile_args=flags, extra_link_args=link, define_macros=macros,
                      depends=kernel_headers)
        )
        config["variants"][isa] = flags
    write_build_config(config)
    render_templates()
    return cythonize(extensions, compiler_directives=DIRECTIVES,
                     include_path=[os.path.join(HERE, "cybn")])


def render_templates():
    """Render the kernel templates (``cybn/_kernels/*.pxi.tp``, Cython's Tempita) into the
    ``.pxi`` files they generate, when the template is newer than its output."""
    from Cython import Tempita

    folder = os.path.join(HERE, "cybn", "_kernels")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".pxi.tp"):
            continue
        source, target = os.path.join(folder, name), os.path.join(folder, name[:-3])
        if os.path.exists(target) and os.path.getmtime(target) >= os.path.getmtime(source):
            continue
        with open(source) as f:
            text = Tempita.sub(f.read())
        with open(target, "w") as f:
            f.write("# Generated from " + name + " by setup.py: edit the template.\n" + text)


def write_build_config(config):
    """Record the flags used, for ``cybn.show_config()``."""
    cc = os.environ.get("CC") or shutil.which("cc") or "cc"
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "unknown"
    import Cython

    path = os.path.join(HERE, "cybn", "_build_config.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time; do not edit.\n")
        f.write(f"COMPILER = {version!r}\n")
        f.write(f"CYTHON_VERSION = {Cython.__version__!r}\n")
        f.write(f"NUMPY_BUILD_VERSION = {np.__version__!r}\n")
        f.write(f"OPENMP_CFLAGS = {config['openmp_cflags']!r}\n")
        f.write(f"OPENMP_LDFLAGS = {config['openmp_ldflags']!r}\n")
        f.write(f"VARIANT_CFLAGS = {config['variants']!r}\n")


setup(ext_modules=build_extensions())
