// fastgan._C: every operator schema in one TORCH_LIBRARY block (implementations are registered
// per device in <stem>_cpu.cpp and <stem>.cu), plus a small pybind11 module with build facts.
// Importing fastgan._C is what makes torch.ops.fastgan.* exist.
#include <torch/extension.h>

TORCH_LIBRARY(fastgan, m) {
  // ---- losses: one term  scale * phi(sign * x + shift)  (see loss_terms.h), reduced ----
  // reduction: 0 none (elementwise, x's shape), 1 mean, 2 sum (0-dim). One pass each way.
  m.def("loss_term_forward(Tensor x, int phi, float sign, float shift, float scale, int reduction) -> Tensor");
  // grad_out: 0-dim for mean/sum, x's shape for none. Returns d loss / d x.
  m.def("loss_term_backward(Tensor grad_out, Tensor x, int phi, float sign, float shift, float scale, int reduction) -> Tensor");

  // ---- gradient penalties on per-row input gradients g (rows, features), mean over rows ----
  // kind 0: weight * |g|^2 / 2 (R1/R2);  kind 1: weight * (|g| - center)^2 (WGAN-GP, DRAGAN).
  m.def("penalty_forward(Tensor grad, int kind, float weight, float center) -> Tensor");
  m.def("penalty_backward(Tensor grad_out, Tensor grad, int kind, float weight, float center) -> Tensor");

  // ---- fused MLP discriminator step (docs/DESIGN.md section 4); see fastgan/fused.py ----
  // Rows are already packed. weights[l]: (H_l, H_{l-1}); biases: empty or one per layer;
  // w_out: (1, H_L); b_out: (1,) or None. Terms are [phi, sign, shift, scale] with any mean's
  // 1/N folded into scale; an empty list means no term. paired: term_real applies to
  // r - f (relativistic) and term_fake is empty. penalty_side: -1 none, 0 real, 1 fake,
  // 2 penalty_input; penalty_weight already holds the 1/rows of the mean.
  // Options (defaults are what the library uses): path "auto" | "fused" (the small-width kernel;
  // raises where the network does not fit it) | "wide" (products + epilogues) for the cuda and
  // triton backends (cpu and torch have one path and take "auto" only); tensor_cores: the cuda
  // fused kernel runs its products on tensor cores (3xTF32 for fp32 unless allow_tf32, else TF32).
  // Dropout: masks_real / masks_fake / masks_penalty are [] (no dropout) or one contiguous
  // (rows of that block, H_l) multiplier tensor per hidden layer (0 or 1/(1-p), the rows' dtype
  // and device): h_l = leaky(z_l) * m_l, and every activation-derivative factor is leaky'(z_l) * m_l.
  // masks_real and masks_fake come together; masks_penalty exactly with them when penalty_side == 2.
  // A backend that takes no masks yet raises when given any. (A list argument takes no default in a
  // schema, so every caller passes the three lists; fastgan.step_spec always does.)
  // Returns [stats = (loss, penalty, mean real logit, mean fake logit),
  //          dW_1..dW_L, db_1..db_L (if biases), dw_out, db_out (if b_out)].
  m.def("mlp_disc_step(Tensor real, Tensor fake, Tensor? penalty_input, Tensor[] weights, Tensor[] biases, "
        "Tensor w_out, Tensor? b_out, float negative_slope, float[] term_real, float[] term_fake, bool paired, "
        "int penalty_side, int penalty_kind, float penalty_weight, float penalty_center, bool allow_tf32, "
        "Tensor[] masks_real, Tensor[] masks_fake, Tensor[] masks_penalty, str path=\"auto\", "
        "bool tensor_cores=False) -> Tensor[]");
  // Generator side: loss = sum of term over fake logits (or over r - f when paired, which needs
  // real). masks_fake / masks_real: dropout as above (masks_real exactly with masks_fake when
  // paired). Returns [stats = (loss, mean fake logit), d loss / d fake (fake's shape)].
  m.def("mlp_gen_step(Tensor fake, Tensor? real, Tensor[] weights, Tensor[] biases, Tensor w_out, "
        "Tensor? b_out, float negative_slope, float[] term, bool paired, bool allow_tf32, Tensor[] masks_fake, "
        "Tensor[] masks_real, str path=\"auto\", bool tensor_cores=False) -> Tensor[]");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgan native kernels (operators live in torch.ops.fastgan)";
#ifdef FASTGAN_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("built_with_torch") = FASTGAN_TORCH_VERSION;  // torch.__version__ at build time
}
