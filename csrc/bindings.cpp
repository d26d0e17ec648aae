// fastgan._C: a small pybind11 module with build facts. The operators' schemas are stated once, in
// Python (fastgan/ops/<op>.py, defined when fastgan is imported); this extension registers their
// CPU and CUDA kernels (TORCH_LIBRARY_IMPL in <stem>_cpu.cpp and <stem>.cu), which the dispatcher
// checks against those schemas.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgan native kernels (operators live in torch.ops.fastgan)";
#ifdef FASTGAN_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("built_with_torch") = FASTGAN_TORCH_VERSION;  // torch.__version__ at build time
}
