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
    for proto in protos:
        _use_private_pool(os.path.splitext(os.path.relpath(proto, "protos"))[0] + "_pb2.py")


def _use_private_pool(path: str) -> None:
    """Register the generated messages in gateway._proto.POOL instead of protobuf's default pool.

    tritonclient's stubs define the same `inference.*` symbols from a different revision of the
    protos, and one descriptor pool cannot hold both: with our own pool, a process (a test, a
    tool that embeds the gateway) can import the gateway's servicer and tritonclient together.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    default_import = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
    if default_import not in text or "_descriptor_pool.Default()" not in text:
        raise RuntimeError(f"{path}: protoc's output changed shape; cannot move it to gateway._proto.POOL")
    text = text.replace(default_import, "from gateway._proto import POOL as _POOL\n")
    text = text.replace("_descriptor_pool.Default()", "_POOL")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


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
