"""Build fastgan: setuptools drives CMake (CMakeLists.txt is the one description of the build).

Install against the torch you already have:  pip install --no-build-isolation .

Build knobs (environment variables):
  FASTGAN_SKIP_EXTENSION=1   build no native extension (pure Python: torch/reference/triton backends)
  FASTGAN_CUDA=0             do not build or check the CUDA sources
  FASTGAN_CUDA_CHECK=0       with a CPU-only torch, skip the nvcc compile-only check of csrc/*.cu
  FASTGAN_REQUIRE_CUDA=1     fail the build unless csrc/*.cu are compiled (CI sets it)
  FASTGAN_CUDA_ARCHS=90      CUDA architectures in CMake syntax ("90" = sm_90 SASS + PTX; "90;100")
  FASTGAN_PTXAS_VERBOSE=1    print ptxas registers / shared memory / spills per kernel (-Xptxas -v)
  FASTGAN_JOBS=N             parallel compile jobs (default: CPU count)
  FASTGAN_BUILD_TYPE=Release CMake build type (Release, RelWithDebInfo, Debug)
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as err:
            raise RuntimeError(
                "fastgan's extension builds against an installed torch: install torch first, "
                "then `pip install --no-build-isolation .`") from err
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DFASTGAN_OUTPUT_DIR={out_dir}",
            f"-DCMAKE_BUILD_TYPE={_flag('FASTGAN_BUILD_TYPE', 'Release')}",
            f"-DFASTGAN_CUDA={'OFF' if _flag('FASTGAN_CUDA', '1') == '0' else 'ON'}",
            f"-DFASTGAN_CUDA_CHECK={'OFF' if _flag('FASTGAN_CUDA_CHECK', '1') == '0' else 'ON'}",
            f"-DFASTGAN_CUDA_ARCHS={_flag('FASTGAN_CUDA_ARCHS', '90')}",
            f"-DFASTGAN_REQUIRE_CUDA={'ON' if _flag('FASTGAN_REQUIRE_CUDA', '0') == '1' else 'OFF'}",
            f"-DFASTGAN_PTXAS_VERBOSE={'ON' if _flag('FASTGAN_PTXAS_VERBOSE', '0') == '1' else 'OFF'}",
        ]
        try:
            import ninja  # noqa: F401
            configure += ["-G", "Ninja"]
        except ImportError:
            pass
        jobs = _flag("FASTGAN_JOBS", str(os.cpu_count() or 1))
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


ext_modules = [] if _flag("FASTGAN_SKIP_EXTENSION", "0") == "1" else [CMakeExtension("fastgan._C")]

setup(
    packages=find_packages(include=["fastgan", "fastgan.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
