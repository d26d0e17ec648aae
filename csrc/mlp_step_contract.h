// The fused MLP step's argument contract (docs/DESIGN.md section 4a; fastgan/ops/mlp_step.py holds the
// op schemas), parsed and validated once for every native implementation: csrc/mlp_step_cpu.cpp
// and csrc/mlp_step.cu. One set of messages; every check runs before any kernel.
//
//   terms:        [] (no term) or [phi, sign, shift, scale], phi a Phi code (loss_terms.h)
//   paired:       relativistic: term_real applies to r_i - f_i, term_fake must be [], nr == nf
//   penalty_side: -1 none, 0 real rows, 1 fake rows, 2 penalty_input rows (given exactly then)
//   penalty_kind: 0 weight |g|^2 / 2, 1 weight (|g| - center)^2 (PenaltyKind)
//   rows:         (rows >= 1, K), one floating dtype and one device for every tensor
//   network:      weights[l] (H_{l+1}, H_l) with H_0 = K, biases [] or one (H_{l+1},) per layer,
//                 w_out (1, H_L), b_out (1,) or None, negative_slope >= 0
//   masks_*:      dropout multipliers: [] or one contiguous (rows of that block, H_l) tensor per
//                 hidden layer like the rows; real and fake together, penalty exactly with them
//                 when penalty_side == 2 (parse_masks)
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "loss_terms.h"

namespace fastgan {
namespace contract {

struct Network {
  std::vector<int64_t> width;  // H_0 = K, H_1..H_L
  bool has_bias = false, has_b_out = false;
  double alpha = 0;            // LeakyReLU negative slope
  int depth() const { return int(width.size()) - 1; }
  int64_t max_width() const {
    int64_t m = 0;
    for (int64_t w : width) m = w > m ? w : m;
    return m;
  }
};

struct Penalty {
  int side = -1;  // -1 none, 0 real, 1 fake, 2 penalty_input
  int kind = PENALTY_SQUARED;
  double weight = 0, center = 0;
  bool active() const { return side >= 0; }
};

struct DiscArgs {
  Network net;
  Term term_real{}, term_fake{};
  bool has_real = false, has_fake = false, paired = false;
  Penalty pen;
  int64_t rows[3] = {0, 0, 0};  // real, fake, penalty_input
};

struct GenArgs {
  Network net;
  Term term{};
  bool has_term = false, paired = false;
  int64_t rows[2] = {0, 0};  // real (paired only), fake
};

// "fastgan mlp step (cuda): " etc.
inline std::string prefix(at::DeviceType dev) {
  return std::string("fastgan mlp step (") + (dev == at::kCUDA ? "cuda" : "cpu") + "): ";
}
inline const char* device_word(at::DeviceType dev) { return dev == at::kCUDA ? "CUDA" : "CPU"; }

// The op's path option: "auto" (the backend decides), "fused" or "wide" (cuda; see fastgan/ops/mlp_step.py).
enum class Path { AUTO, FUSED, WIDE };
inline Path parse_path(c10::string_view path, at::DeviceType dev) {
  if (path == "auto") return Path::AUTO;
  if (path == "fused") return Path::FUSED;
  TORCH_CHECK(path == "wide", prefix(dev), "path must be 'auto', 'fused' or 'wide', got '", std::string(path), "'");
  return Path::WIDE;
}
// Backends with one path (cpu) take "auto" only.
inline void check_single_path(c10::string_view path, at::DeviceType dev) {
  TORCH_CHECK(path == "auto", prefix(dev), "path must be 'auto' (this backend has one path), got '",
              std::string(path), "'");
}

// [] -> false; [phi, sign, shift, scale] -> true and *t.
inline bool parse_term(c10::ArrayRef<double> v, const char* name, Term* t, at::DeviceType dev) {
  if (v.empty()) return false;
  TORCH_CHECK(v.size() == 4, prefix(dev), name, " must be [] or [phi, sign, shift, scale], got ", v.size(),
              " numbers");
  const int phi = int(v[0]);
  TORCH_CHECK(double(phi) == v[0] && phi >= SOFTPLUS && phi <= HALF_SQUARE, prefix(dev), name,
              "[0] must be a phi code 0..3 (softplus, relu, identity, half square), got ", v[0]);
  *t = Term{phi, v[1], v[2], v[3]};
  return true;
}

// A tensor's device and dtype against the first row tensor (which sets both).
inline void check_like(const at::Tensor& t, const std::string& name, const at::Tensor& first, at::DeviceType dev) {
  TORCH_CHECK(t.device().type() == dev, prefix(dev), name, " must be a ", device_word(dev), " tensor, got ",
              t.device());
  TORCH_CHECK(t.device() == first.device(), prefix(dev), name, " is on ", t.device(), " but the first input is on ",
              first.device());
  TORCH_CHECK(t.scalar_type() == first.scalar_type(), prefix(dev), name, " has dtype ", t.scalar_type(),
              " but the first input has ", first.scalar_type(), "; use one dtype");
}

// Rows (rows >= 1, K) like `first` (first == x checks x itself).
inline void check_rows(const at::Tensor& x, const char* name, const at::Tensor& first, at::DeviceType dev) {
  check_like(x, name, first, dev);
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), prefix(dev), name, " must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.dim() == 2, prefix(dev), name, " must be (rows, K), got shape ", x.sizes());
  TORCH_CHECK(x.size(0) > 0, prefix(dev), name, " must have at least one row (rows >= 1), got shape ", x.sizes());
  TORCH_CHECK(x.size(1) == first.size(1), prefix(dev), name, " has ", x.size(1),
              " features per row but the first input has ", first.size(1), " (", name, " must be (rows, ",
              first.size(1), "))");
}

inline Network check_network(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                             const at::Tensor& w_out, const std::optional<at::Tensor>& b_out, double negative_slope,
                             at::DeviceType dev) {
  TORCH_CHECK(!weights.empty(), prefix(dev), "weights must hold at least one hidden layer");
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), prefix(dev),
              "biases must be empty or one per layer (", weights.size(), "), got ", biases.size());
  TORCH_CHECK(negative_slope >= 0, prefix(dev), "negative_slope must be >= 0, got ", negative_slope);
  Network net;
  net.width.push_back(x.size(1));
  net.has_bias = !biases.empty();
  net.has_b_out = b_out.has_value();
  net.alpha = negative_slope;
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    const int64_t prev = net.width.back();
    const std::string name = "weights[" + std::to_string(l) + "]";
    check_like(w, name, x, dev);
    TORCH_CHECK(w.dim() == 2 && w.size(0) > 0 && w.size(1) == prev, prefix(dev), name, " must be (H, ", prev,
                ") with H >= 1 (", l == 0 ? "K = the inputs' row width" : "the previous layer's H", "), got shape ",
                w.sizes());
    if (net.has_bias) {
      const std::string bname = "biases[" + std::to_string(l) + "]";
      check_like(biases[l], bname, x, dev);
      TORCH_CHECK(biases[l].dim() == 1 && biases[l].size(0) == w.size(0), prefix(dev), bname,
                  " must have shape (", w.size(0), ",), got ", biases[l].sizes());
    }
    net.width.push_back(w.size(0));
  }
  check_like(w_out, "w_out", x, dev);
  TORCH_CHECK(w_out.dim() == 2 && w_out.size(0) == 1 && w_out.size(1) == net.width.back(), prefix(dev),
              "w_out must have shape (1, ", net.width.back(), ") (w_out must be the output layer's weight), got ",
              w_out.sizes());
  if (b_out) {
    check_like(*b_out, "b_out", x, dev);
    TORCH_CHECK(b_out->dim() == 1 && b_out->size(0) == 1, prefix(dev), "b_out must have shape (1,), got ",
                b_out->sizes());
  }
  return net;
}

// Dropout masks of one block of rows: [] (returns false) or one contiguous (rows, H_l) tensor per
// hidden layer like `first`.
inline bool parse_masks(at::TensorList masks, const char* name, int64_t rows, const Network& net,
                        const at::Tensor& first, at::DeviceType dev) {
  if (masks.empty()) return false;
  TORCH_CHECK(int64_t(masks.size()) == net.depth(), prefix(dev), name, " must be [] or one mask per hidden layer (",
              net.depth(), "), got ", masks.size());
  for (int l = 0; l < net.depth(); ++l) {
    const std::string mname = std::string(name) + "[" + std::to_string(l) + "]";
    check_like(masks[l], mname, first, dev);
    TORCH_CHECK(masks[l].dim() == 2 && masks[l].size(0) == rows && masks[l].size(1) == net.width[l + 1], prefix(dev),
                mname, " must have shape (", rows, ", ", net.width[l + 1], ") (rows of its block, the layer's width), got ",
                masks[l].sizes());
    TORCH_CHECK(masks[l].is_contiguous(), prefix(dev), mname, " must be contiguous");
  }
  return true;
}

// Which mask lists are given, checked for consistency: all of a step's blocks, or none.
inline bool parse_disc_masks(at::TensorList masks_real, at::TensorList masks_fake, at::TensorList masks_penalty,
                             const at::Tensor& real, const at::Tensor& fake,
                             const std::optional<at::Tensor>& penalty_input, const Network& net, at::DeviceType dev) {
  const bool r = parse_masks(masks_real, "masks_real", real.size(0), net, real, dev);
  const bool f = parse_masks(masks_fake, "masks_fake", fake.size(0), net, real, dev);
  TORCH_CHECK(r == f, prefix(dev), "masks_real and masks_fake must be given together (dropout on both passes), got ",
              r ? "masks_real only" : "masks_fake only");
  const bool p = penalty_input ? parse_masks(masks_penalty, "masks_penalty", penalty_input->size(0), net, real, dev)
                               : !masks_penalty.empty();
  TORCH_CHECK(p == (r && penalty_input.has_value()), prefix(dev), "masks_penalty must be given exactly when "
              "penalty_side == 2 and masks_real / masks_fake are given, got ", masks_penalty.size(), " masks");
  return r;
}

inline DiscArgs parse_disc(const at::Tensor& real, const at::Tensor& fake, const std::optional<at::Tensor>& penalty_input,
                           at::TensorList weights, at::TensorList biases, const at::Tensor& w_out,
                           const std::optional<at::Tensor>& b_out, double negative_slope,
                           c10::ArrayRef<double> term_real, c10::ArrayRef<double> term_fake, bool paired,
                           int64_t penalty_side, int64_t penalty_kind, double penalty_weight, double penalty_center,
                           at::DeviceType dev) {
  DiscArgs a;
  check_rows(real, "real", real, dev);
  check_rows(fake, "fake", real, dev);
  a.net = check_network(real, weights, biases, w_out, b_out, negative_slope, dev);
  a.has_real = parse_term(term_real, "term_real", &a.term_real, dev);
  a.has_fake = parse_term(term_fake, "term_fake", &a.term_fake, dev);
  a.paired = paired;
  if (paired) {
    TORCH_CHECK(real.size(0) == fake.size(0), prefix(dev), "paired losses need as many real rows as fake rows, got ",
                real.size(0), " and ", fake.size(0));
    TORCH_CHECK(!a.has_fake, prefix(dev), "paired losses take their term in term_real; term_fake must be []");
    TORCH_CHECK(a.has_real, prefix(dev), "paired losses need term_real");
  }
  TORCH_CHECK(penalty_side >= -1 && penalty_side <= 2, prefix(dev), "penalty_side must be -1 (none), 0 (real), "
              "1 (fake) or 2 (penalty_input), got ", penalty_side);
  TORCH_CHECK((penalty_side == 2) == penalty_input.has_value(), prefix(dev), "penalty_input must be given exactly "
              "when penalty_side == 2 (penalty_side 2 needs penalty_input rows), got penalty_side ", penalty_side,
              penalty_input.has_value() ? " with" : " without", " penalty_input");
  if (penalty_side >= 0) {
    TORCH_CHECK(penalty_kind == PENALTY_SQUARED || penalty_kind == PENALTY_CENTERED, prefix(dev),
                "penalty_kind must be 0 (weight |g|^2 / 2) or 1 (weight (|g| - center)^2), got ", penalty_kind);
    a.pen = Penalty{int(penalty_side), int(penalty_kind), penalty_weight, penalty_center};
  }
  if (penalty_input) check_rows(*penalty_input, "penalty_input", real, dev);
  a.rows[0] = real.size(0);
  a.rows[1] = fake.size(0);
  a.rows[2] = penalty_input ? penalty_input->size(0) : 0;
  return a;
}

// The generator step's masks: masks_fake, and masks_real exactly with it on a paired loss.
inline bool parse_gen_masks(at::TensorList masks_fake, at::TensorList masks_real, const at::Tensor& fake,
                            const std::optional<at::Tensor>& real, bool paired, const Network& net, at::DeviceType dev) {
  const bool f = parse_masks(masks_fake, "masks_fake", fake.size(0), net, fake, dev);
  const bool r = paired ? parse_masks(masks_real, "masks_real", real->size(0), net, fake, dev) : !masks_real.empty();
  TORCH_CHECK(r == (f && paired), prefix(dev), "masks_real must be given exactly when masks_fake is and the loss is "
              "paired, got ", masks_real.size(), " masks");
  return f;
}

inline GenArgs parse_gen(const at::Tensor& fake, const std::optional<at::Tensor>& real, at::TensorList weights,
                         at::TensorList biases, const at::Tensor& w_out, const std::optional<at::Tensor>& b_out,
                         double negative_slope, c10::ArrayRef<double> term, bool paired, at::DeviceType dev) {
  GenArgs a;
  check_rows(fake, "fake", fake, dev);
  a.net = check_network(fake, weights, biases, w_out, b_out, negative_slope, dev);
  a.has_term = parse_term(term, "term", &a.term, dev);
  a.paired = paired;
  if (paired) {
    TORCH_CHECK(real.has_value(), prefix(dev), "a paired (relativistic) generator loss needs real rows");
    check_rows(*real, "real", fake, dev);
    TORCH_CHECK(real->size(0) == fake.size(0), prefix(dev), "paired losses need as many real rows as fake rows, got ",
                real->size(0), " and ", fake.size(0));
  }
  a.rows[0] = paired ? real->size(0) : 0;
  a.rows[1] = fake.size(0);
  return a;
}

}  // namespace contract
}  // namespace fastgan
