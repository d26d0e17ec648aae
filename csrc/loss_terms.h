// Elementwise maths shared by every native kernel (CPU and CUDA): the GAN loss terms and the
// gradient-penalty row functions. One definition, used by losses_*, penalties_* and mlp_step_*.
//
// A loss term is   term(x) = scale * phi(sign * x + shift)   with phi one of
//   SOFTPLUS     phi(z) = log(1 + e^z)     phi'(z) = sigmoid(z)   (stable for |z| up to 1e4 and beyond)
//   RELU         phi(z) = max(z, 0)        phi'(z) = [z > 0]   (NaN: phi = NaN, phi' = 1, as torch)
//   IDENTITY     phi(z) = z                phi'(z) = 1
//   HALF_SQUARE  phi(z) = z^2 / 2          phi'(z) = z
// e.g. non-saturating D on real logits: softplus(-r) = {SOFTPLUS, sign -1, shift 0, scale 1};
// hinge D on real: relu(1 - r) = {RELU, -1, 1, 1}; least squares (r - b)^2/2 = {HALF_SQUARE, 1, -b, 1}.
//
// NaN and Inf propagate exactly as in torch (autograd of F.relu, F.softplus, vector_norm): every
// comparison below is written so that NaN takes the branch that carries it (`z <= 0 ? 0 : z`, not
// `z > 0 ? z : 0`), at the same cost (one compare, one select) for finite inputs, bit for bit.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define FASTGAN_HD __host__ __device__ __forceinline__
#else
#define FASTGAN_HD inline
#endif

namespace fastgan {

enum Phi : int { SOFTPLUS = 0, RELU = 1, IDENTITY = 2, HALF_SQUARE = 3 };
enum Reduction : int { REDUCE_NONE = 0, REDUCE_MEAN = 1, REDUCE_SUM = 2 };
enum PenaltyKind : int { PENALTY_SQUARED = 0, PENALTY_CENTERED = 1 };

// Term parameters, passed by value to kernels.
struct Term {
  int phi;       // Phi
  double sign;   // +1 or -1
  double shift;  // added after the sign
  double scale;  // multiplies the result (a mean's 1/N may be folded in by the caller)
};

template <typename acc_t>
FASTGAN_HD acc_t phi_value(int phi, acc_t z) {
  switch (phi) {
    case SOFTPLUS: {
      // max(z, 0) + log1p(exp(-|z|)): exact for large |z|, never overflows.
      acc_t m = z > acc_t(0) ? z : acc_t(0);
      return m + log1p(exp(-fabs(z)));
    }
    case RELU: return z <= acc_t(0) ? acc_t(0) : z;  // relu(NaN) = NaN
    case IDENTITY: return z;
    default: return acc_t(0.5) * z * z;  // HALF_SQUARE
  }
}

template <typename acc_t>
FASTGAN_HD acc_t phi_derivative(int phi, acc_t z) {
  switch (phi) {
    case SOFTPLUS: {
      // sigmoid(z) without overflow: e = exp(-|z|) lies in (0, 1].
      acc_t e = exp(-fabs(z));
      return z >= acc_t(0) ? acc_t(1) / (acc_t(1) + e) : e / (acc_t(1) + e);
    }
    // torch's relu backward passes the gradient unless the output is <= 0: 1 at NaN
    case RELU: return z <= acc_t(0) ? acc_t(0) : acc_t(1);
    case IDENTITY: return acc_t(1);
    default: return z;  // HALF_SQUARE
  }
}

// term(x) and d term / dx.
template <typename acc_t>
FASTGAN_HD acc_t term_value(const Term& t, acc_t x) {
  return acc_t(t.scale) * phi_value<acc_t>(t.phi, acc_t(t.sign) * x + acc_t(t.shift));
}
template <typename acc_t>
FASTGAN_HD acc_t term_derivative(const Term& t, acc_t x) {
  return acc_t(t.scale) * acc_t(t.sign) * phi_derivative<acc_t>(t.phi, acc_t(t.sign) * x + acc_t(t.shift));
}

// Gradient penalty of one row with input-gradient norm n = |g|:
//   SQUARED   P = weight * n^2 / 2          dP/dg = weight * g
//   CENTERED  P = weight * (n - center)^2   dP/dg = 2 weight (n - center) / n * g   (0 when n = 0,
//             as torch's norm backward; NaN when n is NaN or Inf, as there)
template <typename acc_t>
FASTGAN_HD acc_t penalty_value(int kind, acc_t sq_norm, acc_t weight, acc_t center) {
  if (kind == PENALTY_SQUARED) return weight * acc_t(0.5) * sq_norm;
  acc_t d = sqrt(sq_norm) - center;
  return weight * d * d;
}
// A row's squared norm summed in double from T data, as torch's reduction in T holds it: for
// anything narrower than double, torch sums in float, so beyond float's range the norm is +Inf
// (the penalty Inf and, for CENTERED, its gradient NaN), where the double sum would stay finite.
// Finite sums within range are returned unchanged. Host code (CUDA kernels accumulate in T).
template <typename T>
inline double sq_norm_as_torch(double sq) {
  if (sizeof(T) >= sizeof(double)) return sq;
  return sq >= 0x1.ffffffp+127 ? double(INFINITY) : sq;  // exactly where float(sq) rounds to +Inf
}

// The factor k with dP/dg = k * g.
template <typename acc_t>
FASTGAN_HD acc_t penalty_grad_factor(int kind, acc_t sq_norm, acc_t weight, acc_t center) {
  if (kind == PENALTY_SQUARED) return weight;
  acc_t n = sqrt(sq_norm);
  return n == acc_t(0) ? acc_t(0) : acc_t(2) * weight * (n - center) / n;
}

}  // namespace fastgan
