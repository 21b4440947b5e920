"""Builds timeshare's C++ core with CMake and installs it inside the `timeshare` package.

`pip install .` (or `pip install -e .`) runs CMake once and puts three shared libraries beside
the Python sources: the pybind11 module `_C`, `libtimeshare.so` (the allocator PyTorch loads
through CUDAPluggableAllocator; no libtorch dependency) and, where a torch is installed in the
target environment, `libtimeshare_torch_oom.so` (raises torch.OutOfMemoryError). A
`timeshare-autoload.pth` start-up hook is installed at the site-packages root so that
`TIMESHARE=1 python train.py` enables timeshare with no code change.

Where torch is a CUDA build, it also builds the native route, `libtimeshare_native-<torch
version>.so` (timeshare as PyTorch's own CUDAAllocator, python/timeshare/_native.py), against
that torch; TIMESHARE_NATIVE_FOR=/path/to/python[:...] adds the torch of other interpreters (the
test suite's CUDA-torch virtualenv).

Environment knobs: TIMESHARE_CUDA=AUTO|ON|OFF, TIMESHARE_TORCH_DIR=/path/to/torch (skip the
search), TIMESHARE_NATIVE_FOR, TIMESHARE_BUILD_TYPE=Release|Debug|RelWithDebInfo,
CMAKE_BUILD_PARALLEL_LEVEL.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PTH_NAME = "timeshare-autoload.pth"


_TORCH_QUERY = ("import os,torch;print(os.path.dirname(torch.__file__));"
                "print(int(torch.compiled_with_cxx11_abi()));print(torch.__version__);"
                "print(torch.version.cuda or '')")


def _query_torch(python: str) -> tuple[str, str, str, str] | None:
    """(torch package dir, cxx11 abi 0/1, version, CUDA version or "") of `python`'s torch."""
    try:
        out = subprocess.run([python, "-I", "-c", _TORCH_QUERY], capture_output=True, text=True,
                             timeout=300, check=True).stdout.splitlines()
        return out[0], out[1], out[2], out[3] if len(out) > 3 else ""
    except (subprocess.SubprocessError, OSError, IndexError):
        return None


def _find_target_torch() -> tuple[str, str]:
    """(torch package dir, cxx11 abi 0/1) of the torch in the target interpreter, or ("", "1").

    pip builds in an isolated environment without torch; `python -I` (isolated mode: no
    PYTHONPATH overlay) sees the interpreter's own site-packages, where torch lives.
    """
    if os.environ.get("TIMESHARE_TORCH_DIR"):
        return os.environ["TIMESHARE_TORCH_DIR"], os.environ.get("TIMESHARE_TORCH_CXX11_ABI", "1")
    found = _query_torch(sys.executable)
    return (found[0], found[1]) if found else ("", "1")


def _native_torch_entries() -> str:
    """The CUDA builds of torch to build the native layer against ("dir|version|abi;..."): the
    target interpreter's torch, and that of every interpreter in TIMESHARE_NATIVE_FOR
    (os.pathsep-separated paths of python executables)."""
    pythons = [sys.executable]
    pythons += [p for p in os.environ.get("TIMESHARE_NATIVE_FOR", "").split(os.pathsep) if p]
    entries: dict[str, str] = {}
    for py in pythons:
        found = _query_torch(py)
        if found and found[3]:  # a CUDA build
            entries[found[2]] = f"{found[0]}|{found[2]}|{found[1]}"
    return ";".join(entries.values())


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


EXTRA_LIBS = ("libtimeshare.so", "libtimeshare_torch_oom.so", "libtimeshare_native-*.so")


class CMakeBuild(build_ext):
    """Runs CMake; besides `_C` it produces the allocator library and the OOM shim, which are
    declared as outputs so wheels and editable installs carry them too."""

    def _extra_built(self) -> list[Path]:
        built_dir = Path(self.build_lib).resolve() / "timeshare"
        return sorted({p for pattern in EXTRA_LIBS for p in built_dir.glob(pattern)})

    def _source_pkg_dir(self) -> Path:
        return Path(self.get_finalized_command("build_py").get_package_dir("timeshare"))

    def get_outputs(self) -> list[str]:
        extra = [str(self._source_pkg_dir() / p.name) if self.inplace else str(p)
                 for p in self._extra_built()]
        return sorted({*super().get_outputs(), *extra})

    def get_output_mapping(self) -> dict[str, str]:
        mapping = dict(super().get_output_mapping())
        if self.inplace:
            for built in self._extra_built():
                mapping[str(built)] = str(self._source_pkg_dir() / built.name)
        return mapping

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        for built in self._extra_built():
            self.copy_file(str(built), str(self._source_pkg_dir() / built.name))

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        torch_dir, abi = _find_target_torch()
        cfg = os.environ.get("TIMESHARE_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DTIMESHARE_CUDA={os.environ.get('TIMESHARE_CUDA', 'AUTO')}",
            "-DTIMESHARE_BUILD_TESTS=OFF",
            "-DTIMESHARE_BUILD_TOOLS=OFF",
            "-DTIMESHARE_BUILD_PYTHON=ON",
            f"-DTIMESHARE_TORCH_DIR={torch_dir}",
            f"-DTIMESHARE_TORCH_CXX11_ABI={abi}",
            f"-DTIMESHARE_NATIVE_TORCH={_native_torch_entries()}",
        ]
        env = dict(os.environ)
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True, env=env)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", cfg], check=True, env=env)


class BuildPyWithPth(build_py):
    """Also places the start-up hook at the root of the wheel (site-packages)."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(ROOT / "python" / PTH_NAME), str(Path(self.build_lib) / PTH_NAME))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH_NAME)]


setup(
    packages=["timeshare"],
    package_dir={"": "python"},
    package_data={"timeshare": ["py.typed", "*.pyi", "traces/*.pkl.gz", "lstm_pretrained.tsw"]},
    ext_modules=[CMakeExtension("timeshare._C")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithPth},
    zip_safe=False,
)
