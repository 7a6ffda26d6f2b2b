// The Python module of the CPU kernels (compiled last in the unit, after the kernels).
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // wrap_pybind_function: a failed TORCH_CHECK raises RuntimeError with its message.
  m.def("paged_decode_attention", torch::wrap_pybind_function(paged_decode_attention));
  m.def("rms_norm", torch::wrap_pybind_function(rms_norm));
  m.def("add_rms_norm_", torch::wrap_pybind_function(add_rms_norm_));
  m.def("rope_store_", torch::wrap_pybind_function(rope_store_));
  m.def("silu_mul", torch::wrap_pybind_function(silu_mul));
  m.def("argmax_rows", torch::wrap_pybind_function(argmax_rows));
  m.def("kernel_path", &kernel_path);
}
