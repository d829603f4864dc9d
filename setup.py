"""Build steps pyproject.toml cannot declare: the Cython hot path and the gRPC stubs.

The stubs are generated from protos/ into gateway/_proto/ at build time (they are
never committed or edited). The Cython module is required: a build that cannot
compile it fails here rather than serving on a slow path.
"""

from __future__ import annotations

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def generate_stubs() -> None:
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join("protos", "gateway", "_proto", "*.proto")))
    if not protos:
        raise RuntimeError("no .proto files under protos/gateway/_proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["grpc_tools.protoc", "-Iprotos", f"-I{include}", "--python_out=.", "--grpc_python_out=.", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(protos))


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


os.chdir(ROOT)
generate_stubs()  # also for editable installs, which skip build_py's copy step

extensions = cythonize(
    [
        Extension(
            "gateway.native._speedups",
            ["native/speedups.pyx"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"],
        )
    ],
    compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
)

setup(ext_modules=extensions, cmdclass={"build_py": BuildPyWithStubs})
