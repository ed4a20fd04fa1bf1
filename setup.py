"""netagg's compiled extensions; the rest of the package is described in pyproject.toml.

`make install` builds them in place (an editable install) with the system's C compiler. There is no pure-Python
fallback for the hot paths: without a compiler or Python's C headers the build stops and names the Debian
package to install.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError

# Portable: kernels that use newer instructions (AVX2) are chosen at run time, so no -march here.
COMPILE_ARGS = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

#: Every compiled extension: one entry each, sources next to the component that uses it.
EXTENSIONS = [
    Extension(
        "netagg.host_agent._native",
        sources=[
            "host_agent/native/module.c",
            "host_agent/native/quantize.c",
            "host_agent/native/burst.c",
            "host_agent/native/engine.c",
            "host_agent/native/engine_py.c",
        ],
        depends=[
            "host_agent/native/quantize.h",
            "host_agent/native/burst.h",
            "host_agent/native/engine.h",
            "host_agent/native/engine_py.h",
        ],
        extra_compile_args=COMPILE_ARGS,
    ),
    Extension(
        "netagg.softswitch._native",
        sources=["softswitch/native/module.c", "softswitch/native/kernel.c", "softswitch/native/io.c"],
        depends=["softswitch/native/kernel.h", "softswitch/native/io.h"],
        extra_compile_args=COMPILE_ARGS,
    ),
]

_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def toolchain_problem(cc: str) -> str | None:
    """What keeps ``cc`` from compiling the extensions, with the Debian package that fixes it; None if nothing."""
    if shutil.which(cc) is None:
        return _problem(f'no C compiler: "{cc}" is not on PATH', "gcc")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        if include.startswith("/usr/include/"):
            return _problem(f"{include}/Python.h is missing", f"python3-dev (for this Python: python{_PY}-dev)")
        return (
            f"netagg: cannot build its C extension: {include}/Python.h is missing: the Python at {sys.base_prefix} "
            "was installed without its C headers.\n"
            f"Reinstall that Python with its headers, or use Debian's: apt-get install python{_PY}-dev "
            f"python{_PY}-venv, then make the virtualenv with /usr/bin/python{_PY} (rm -rf .venv; "
            "PATH=/usr/bin:$PATH make install)."
        )
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w") as f:
            f.write("#include <Python.h>\n#include <math.h>\n#include <stdint.h>\n#include <string.h>\n")
        run = subprocess.run(
            [cc, "-c", probe, "-o", os.path.join(tmp, "probe.o"), f"-I{include}"], capture_output=True, text=True
        )
        if run.returncode != 0:
            first = next((line for line in run.stderr.splitlines() if "error" in line), run.stderr.strip())
            return _problem(f'"{cc}" cannot compile against the C library headers: {first}', "libc6-dev")
    return None


def _problem(what: str, package: str) -> str:
    return (
        f"netagg: cannot build its C extension: {what}.\n"
        f"Install the Debian package: apt-get install {package}\n"
        "then run `make install` again (as root, `make install` installs the Debian packages it needs itself)."
    )


def _configured_cc() -> str:
    """The compiler setuptools will use: $CC, else the one Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]


class BuildExt(build_ext):
    """build_ext that first checks the toolchain and says what to install when a part is missing."""

    def build_extensions(self) -> None:
        problem = toolchain_problem(self.compiler.compiler_so[0])
        if problem:
            raise PlatformError("\n\n" + problem + "\n")
        super().build_extensions()


if __name__ == "__main__" and sys.argv[1:] == ["--check-toolchain"]:
    # `make install` runs this before pip, so that a missing package is all it prints.
    sys.exit(toolchain_problem(_configured_cc()))

setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": BuildExt})
