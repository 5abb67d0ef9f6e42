// powersgd: one step of subspace iteration per step (Vogels et al., "PowerSGD:
// Practical Low-Rank Gradient Compression", 2019) with a warm-started Q and
// error feedback.
//
// Every tensor of >= 2 dimensions is a matrix M [shape[0], prod(rest)] (row
// major, as the flat gradient lays it out) and is compressed at rank r when
// that saves bytes, r * (rows + cols) < rows * cols; the other tensors (biases,
// norms, small matrices) travel as fp32, all in one batch at the end. For each
// compressed matrix, with M = grad + residual and Q [cols, r] the warm start:
//   P = M Q;  P = orthonormalize(P) (Gram-Schmidt, twice, in double);
//   Q = M^T P;  decoded = P Q^T;  residual = M - decoded;  next warm start = Q.
// A rank-r matrix therefore comes through exactly, up to fp32 rounding that the
// conditioning of M Q amplifies (relative error ~3e-6 on a rank-4 256x512). The
// initial Q is uniform in [-1, 1) from splitmix64(seed), identical on every
// party; a column of Q that is all zero (a zero gradient) is reset to its
// initial value so the rank does not collapse. A column of P that is
// (numerically) dependent on the previous ones becomes zero; one from a
// gradient with an infinity or NaN becomes NaN, so decoding shows it.
//
// Factors travel as fp32 by default (exchange.factors). fp16 and int8 send
// each factor column (r per matrix in P, r in Q) as one fp32 scale, its
// largest magnitude, and the column divided by it: fp16 (11 significant bits
// relative to the scale; 2x fewer bytes) or int8 (round half to even of
// 127 x, 4x fewer). What every party uses is the decoded factor, so all agree
// bit for bit, and the residual is taken against the decoded Q, so error
// feedback also carries the rounding of Q to the next step. The rounding of
// the round-1 P only moves the subspace (P is orthonormalized after the sum).
// A column below 2^-100 is sent as zeros; one with an infinity or NaN gets a
// NaN scale, so it decodes to NaN.
//
// Payload bodies (factors as above, uncompressed tensors always fp32):
//   complete (Encode):  P = M Q of every matrix [r, rows], not
//                       orthonormalized (Decode does that, as every party does
//                       with round 1's sum), Q of every matrix [r, cols], then
//                       the uncompressed tensors
//   round 1 (BeginStep): P = M Q of every matrix, not orthonormalized
//   round 2 (NextRound): Q_i = M_i^T P of every matrix, then the uncompressed
//                        tensors of this party
// The multi-party step is described in transport/codec.h.
//
// Matrix products are plain loops with a fixed summation order: for M Q a dot
// product of 8 interleaved partial sums in double (P's subspace is what the
// whole step depends on; float sums gave 2.6x the error for 25% more speed),
// added pairwise; for M^T P and P Q^T row-ordered fp32 accumulations.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "transport/codecs/codecs.h"
#include "transport/codecs/wire.h"

namespace tandem::codec_internal {
namespace {

struct Matrix {
  size_t offset;  // in the gradient
  size_t rows;
  size_t cols;
  size_t p_offset;  // in the concatenated P factors, [r, rows] each
  size_t q_offset;  // in the concatenated Q factors, [r, cols] each
};

struct Segment {
  size_t offset;
  size_t length;
};

float Dot(const float* a, const float* b, size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t t = 0; t < 8; ++t) acc[t] += double{a[i + t]} * b[i + t];
  }
  double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += double{a[i]} * b[i];
  return static_cast<float>(sum);
}

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void AddFloats(const char* src, size_t count, float* dst) {
  constexpr size_t kBlock = 1024;
  float block[kBlock];
  for (size_t i = 0; i < count; i += kBlock) {
    const size_t len = std::min(kBlock, count - i);
    std::memcpy(block, src + i * sizeof(float), len * sizeof(float));
    for (size_t j = 0; j < len; ++j) dst[i + j] += block[j];
  }
}

class PowerSgdCodec final : public Codec {
 public:
  PowerSgdCodec(const std::vector<std::vector<int64_t>>& shapes, size_t n, uint32_t rank,
                v1::FactorPrecision factors, uint64_t seed)
      : Codec(n),
        rank_(rank),
        factors_(factors == v1::FACTOR_PRECISION_UNSPECIFIED ? v1::FACTOR_PRECISION_FP32 : factors),
        error_(n, 0.0f),
        x_(n, 0.0f) {
    Fingerprint fingerprint;
    fingerprint.Add(rank);
    fingerprint.Add(static_cast<uint64_t>(factors_));
    fingerprint.Add(shapes.size());
    size_t offset = 0;
    for (const std::vector<int64_t>& shape : shapes) {
      fingerprint.Add(shape.size());
      size_t numel = 1;
      for (int64_t dim : shape) {
        fingerprint.Add(static_cast<uint64_t>(dim));
        numel *= static_cast<size_t>(dim);
      }
      if (numel == 0) continue;
      const size_t rows = shape.size() >= 2 ? static_cast<size_t>(shape[0]) : 1;
      const size_t cols = numel / rows;
      if (shape.size() >= 2 && rank_ * (rows + cols) < rows * cols) {
        matrices_.push_back({offset, rows, cols, p_size_, q_size_});
        p_size_ += rank_ * rows;
        q_size_ += rank_ * cols;
      } else {
        if (!raw_.empty() && raw_.back().offset + raw_.back().length == offset) {
          raw_.back().length += numel;
        } else {
          raw_.push_back({offset, numel});
        }
        raw_size_ += numel;
      }
      offset += numel;
    }
    config_ = fingerprint.value();
    for (const Matrix& m : matrices_) {
      for (size_t k = 0; k < rank_; ++k) {
        p_columns_.push_back({m.p_offset + k * m.rows, m.rows});
        q_columns_.push_back({m.q_offset + k * m.cols, m.cols});
      }
    }

    uint64_t state = seed;
    q_init_.resize(q_size_);
    for (float& v : q_init_) {
      v = static_cast<float>(SplitMix64(&state) >> 40) * 0x1p-23f - 1.0f;
    }
    q_ = q_init_;
    p_.resize(p_size_);
    q_new_.resize(q_size_);
  }

  v1::CodecKind kind() const override { return v1::CODEC_KIND_POWERSGD; }
  int rounds() const override { return 2; }

  absl::Status EncodeImpl(const float* grad, std::string* payload) override {
    Compensate(grad);
    ComputeP();
    char* body = StartPayload(header(PayloadRole::kComplete),
                              PBytes() + QBytes() + raw_size_ * sizeof(float), payload);
    // As one party's multi-party step: P as sent, orthonormalized on both
    // sides; Q from that P; the residual against the decoded Q.
    WriteFactors(p_.data(), p_columns_, body);
    ReadFactors(body, p_columns_, p_.data());
    OrthonormalizeAll(p_.data(), &work_);
    ComputeQ();
    WriteFactors(q_new_.data(), q_columns_, body + PBytes());
    ReadFactors(body + PBytes(), q_columns_, q_new_.data());
    WriteRaw(x_.data(), body + PBytes() + QBytes());
    UpdateError();
    SetWarmStart();
    return absl::OkStatus();
  }

  absl::Status Decode(const std::string& payload, float* out, size_t n) const override {
    if (absl::Status s = CheckSize(n, size()); !s.ok()) return s;
    absl::StatusOr<absl::string_view> body = ParseHeader(payload, header(PayloadRole::kComplete));
    if (!body.ok()) return body.status();
    if (absl::Status s = CheckBody(*body, PBytes() + QBytes() + raw_size_ * sizeof(float));
        !s.ok()) {
      return s;
    }
    std::vector<float> p(p_size_);
    std::vector<float> q(q_size_);
    ReadFactors(body->data(), p_columns_, p.data());
    std::vector<double> work;
    OrthonormalizeAll(p.data(), &work);
    ReadFactors(body->data() + PBytes(), q_columns_, q.data());
    Reconstruct(p.data(), q.data(), out);
    ReadRaw(body->data() + PBytes() + QBytes(), out);
    return absl::OkStatus();
  }

  absl::Status BeginStep(const float* grad, size_t n, std::string* payload) override {
    if (absl::Status s = CheckSize(n, size()); !s.ok()) return s;
    AbortStep();
    Compensate(grad);
    ComputeP();
    char* body = StartPayload(header(PayloadRole::kPowerSgdP), PBytes(), payload);
    WriteFactors(p_.data(), p_columns_, body);
    round_ = 1;
    return absl::OkStatus();
  }

  absl::Status NextRound(absl::Span<const std::string> payloads, std::string* payload) override {
    if (round_ != 1) return absl::FailedPreconditionError("powersgd NextRound without BeginStep");
    absl::StatusOr<std::vector<absl::string_view>> bodies =
        Bodies(payloads, PayloadRole::kPowerSgdP, PBytes());
    if (!bodies.ok()) return bodies.status();
    SumFactors(*bodies, p_columns_, p_size_, p_.data());
    OrthonormalizeAll(p_.data(), &work_);
    ComputeQ();
    char* body = StartPayload(header(PayloadRole::kPowerSgdQ), QBytes() + raw_size_ * sizeof(float),
                              payload);
    WriteFactors(q_new_.data(), q_columns_, body);
    ReadFactors(body, q_columns_, q_new_.data());  // the residual is against what others get
    WriteRaw(x_.data(), body + QBytes());
    SaveResidual();
    UpdateError();
    round_ = 2;
    return absl::OkStatus();
  }

  absl::Status FinishStep(absl::Span<const std::string> payloads, float* out, size_t n) override {
    if (round_ != 2) {
      return absl::FailedPreconditionError("powersgd FinishStep without BeginStep and NextRound");
    }
    if (absl::Status s = CheckSize(n, size()); !s.ok()) return s;
    absl::StatusOr<std::vector<absl::string_view>> bodies =
        Bodies(payloads, PayloadRole::kPowerSgdQ, QBytes() + raw_size_ * sizeof(float));
    if (!bodies.ok()) return bodies.status();
    SumFactors(*bodies, q_columns_, q_size_, q_new_.data());
    ReadRaw((*bodies)[0].data() + QBytes(), out);
    for (size_t i = 1; i < bodies->size(); ++i) {
      const char* body = (*bodies)[i].data();
      size_t at = QBytes();
      for (const Segment& s : raw_) {
        AddFloats(body + at, s.length, out + s.offset);
        at += s.length * sizeof(float);
      }
    }
    Reconstruct(p_.data(), q_new_.data(), out);
    SetWarmStart();
    CommitStep();
    return absl::OkStatus();
  }

  CodecState State() const override {
    return {{kCodecErrorState, error_}, {kCodecPowerSgdQState, q_}};
  }

  absl::Status LoadStateImpl(const CodecState& state) override {
    const std::vector<float>* error = nullptr;
    const std::vector<float>* q = nullptr;
    for (const auto& [name, values] : state) {
      const std::vector<float>** slot = name == kCodecErrorState       ? &error
                                        : name == kCodecPowerSgdQState ? &q
                                                                       : nullptr;
      if (slot == nullptr || *slot != nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("powersgd codec state has an unknown or repeated entry \"", name, "\""));
      }
      *slot = &values;
    }
    if (error == nullptr || error->size() != size() || q == nullptr || q->size() != q_size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("powersgd codec state must hold \"", kCodecErrorState, "\" of ", size(),
                       " floats and \"", kCodecPowerSgdQState, "\" of ", q_size_, " floats"));
    }
    error_ = *error;
    q_ = *q;
    RefillZeroColumns();
    return absl::OkStatus();
  }

 protected:
  std::vector<float>* mutable_residual() override { return &error_; }

 private:
  Header header(PayloadRole role) const { return {v1::CODEC_KIND_POWERSGD, role, size(), config_}; }

  static absl::Status CheckBody(absl::string_view body, size_t bytes) {
    if (body.size() == bytes) return absl::OkStatus();
    return absl::DataLossError(
        absl::StrCat("powersgd payload body has ", body.size(), " bytes, expected ", bytes));
  }

  // Bytes of one value of a factor on the wire.
  size_t ValueBytes() const {
    switch (factors_) {
      case v1::FACTOR_PRECISION_FP16:
        return sizeof(uint16_t);
      case v1::FACTOR_PRECISION_INT8:
        return sizeof(int8_t);
      default:
        return sizeof(float);
    }
  }

  // Bytes of factors of `values` values in `columns` columns on the wire.
  size_t FactorBytes(size_t values, size_t columns) const {
    if (factors_ == v1::FACTOR_PRECISION_FP32) return values * sizeof(float);
    return columns * sizeof(float) + values * ValueBytes();
  }
  size_t PBytes() const { return FactorBytes(p_size_, p_columns_.size()); }
  size_t QBytes() const { return FactorBytes(q_size_, q_columns_.size()); }

  // Values in factor columns that tile a factor in order.
  static size_t TiledValues(const std::vector<Segment>& columns) {
    return columns.empty() ? 0 : columns.back().offset + columns.back().length;
  }

  // Writes the factor columns of `from` (which tile it in order) to `to`.
  void WriteFactors(const float* from, const std::vector<Segment>& columns, char* to) const {
    if (factors_ == v1::FACTOR_PRECISION_FP32) {
      std::memcpy(to, from, TiledValues(columns) * sizeof(float));
      return;
    }
    for (const Segment& c : columns) {
      const float* v = from + c.offset;
      uint32_t max_bits = 0;  // of |v|: integer order, NaN above infinity
      for (size_t i = 0; i < c.length; ++i) {
        max_bits = std::max(max_bits, FloatBits(v[i]) & 0x7fffffff);
      }
      // Below 2^-100 a column is sent as zeros (its Q part stays in the residual).
      float scale = BitsFloat(max_bits);
      float inv = 0.0f;
      if (max_bits >= 0x7f800000) {
        scale = std::numeric_limits<float>::quiet_NaN();
      } else if (scale >= 0x1p-100f) {
        inv = 1.0f / scale;
      } else {
        scale = 0.0f;
      }
      std::memcpy(to, &scale, sizeof scale);
      to += sizeof scale;
      if (factors_ == v1::FACTOR_PRECISION_FP16) {
        for (size_t i = 0; i < c.length; ++i) {
          const uint16_t h = FloatToHalf(v[i] * inv);
          std::memcpy(to + i * sizeof h, &h, sizeof h);
        }
        to += c.length * sizeof(uint16_t);
      } else {
        inv *= 127.0f;
        for (size_t i = 0; i < c.length; ++i) {
          to[i] = static_cast<char>(QuantizeInt8(v[i] * inv));
        }
        to += c.length;
      }
    }
  }

  // Decodes what WriteFactors wrote into `to`.
  void ReadFactors(const char* from, const std::vector<Segment>& columns, float* to) const {
    if (factors_ == v1::FACTOR_PRECISION_FP32) {
      std::memcpy(to, from, TiledValues(columns) * sizeof(float));
      return;
    }
    for (const Segment& c : columns) {
      float scale;
      std::memcpy(&scale, from, sizeof scale);
      from += sizeof scale;
      float* v = to + c.offset;
      if (factors_ == v1::FACTOR_PRECISION_FP16) {
        for (size_t i = 0; i < c.length; ++i) {
          uint16_t h;
          std::memcpy(&h, from + i * sizeof h, sizeof h);
          v[i] = HalfToFloat(h) * scale;
        }
        from += c.length * sizeof(uint16_t);
      } else {
        const float step = scale / 127.0f;
        for (size_t i = 0; i < c.length; ++i) {
          v[i] = static_cast<float>(static_cast<int8_t>(from[i])) * step;
        }
        from += c.length;
      }
    }
  }

  // to = the sum of every party's decoded factors, added in party order.
  void SumFactors(absl::Span<const absl::string_view> bodies, const std::vector<Segment>& columns,
                  size_t values, float* to) {
    ReadFactors(bodies[0].data(), columns, to);
    factor_scratch_.resize(values);
    for (size_t i = 1; i < bodies.size(); ++i) {
      ReadFactors(bodies[i].data(), columns, factor_scratch_.data());
      for (size_t j = 0; j < values; ++j) to[j] += factor_scratch_[j];
    }
  }

  // The bodies of every party's payload, all checked before any is used.
  absl::StatusOr<std::vector<absl::string_view>> Bodies(absl::Span<const std::string> payloads,
                                                        PayloadRole role, size_t bytes) const {
    if (payloads.empty()) return absl::InvalidArgumentError("powersgd needs every party's payload");
    std::vector<absl::string_view> bodies;
    for (size_t i = 0; i < payloads.size(); ++i) {
      absl::StatusOr<absl::string_view> body = ParseHeader(payloads[i], header(role));
      absl::Status s = body.ok() ? CheckBody(*body, bytes) : body.status();
      if (!s.ok()) return absl::Status(s.code(), absl::StrCat("party ", i, ": ", s.message()));
      bodies.push_back(*body);
    }
    return bodies;
  }

  // x = grad + residual.
  void Compensate(const float* grad) {
    for (size_t i = 0; i < x_.size(); ++i) x_[i] = error_[i] + grad[i];
  }

  // The new Q is the next step's warm start.
  void SetWarmStart() {
    q_.swap(q_new_);
    RefillZeroColumns();
  }

  // A column of Q that is all zero (from a zero gradient) would stay zero:
  // it restarts from its initial value instead.
  void RefillZeroColumns() {
    for (const Matrix& m : matrices_) {
      for (size_t k = 0; k < rank_; ++k) {
        float* column = q_.data() + m.q_offset + k * m.cols;
        if (std::all_of(column, column + m.cols, [](float v) { return v == 0.0f; })) {
          std::copy_n(q_init_.data() + m.q_offset + k * m.cols, m.cols, column);
        }
      }
    }
  }

  // p_ = M q_ for every matrix.
  void ComputeP() {
    for (const Matrix& m : matrices_) {
      float* p = p_.data() + m.p_offset;
      const float* q = q_.data() + m.q_offset;
      for (size_t i = 0; i < m.rows; ++i) {
        const float* row = x_.data() + m.offset + i * m.cols;
        for (size_t k = 0; k < rank_; ++k) p[k * m.rows + i] = Dot(row, q + k * m.cols, m.cols);
      }
    }
  }

  // q_new_ = M^T p_ for every matrix.
  void ComputeQ() {
    std::fill(q_new_.begin(), q_new_.end(), 0.0f);
    for (const Matrix& m : matrices_) {
      const float* p = p_.data() + m.p_offset;
      float* q = q_new_.data() + m.q_offset;
      for (size_t i = 0; i < m.rows; ++i) {
        const float* row = x_.data() + m.offset + i * m.cols;
        for (size_t k = 0; k < rank_; ++k) {
          const float pk = p[k * m.rows + i];
          float* qk = q + k * m.cols;
          for (size_t j = 0; j < m.cols; ++j) qk[j] += pk * row[j];
        }
      }
    }
  }

  // The P factors of every matrix made orthonormal.
  void OrthonormalizeAll(float* p_all, std::vector<double>* work) const {
    for (const Matrix& m : matrices_) Orthonormalize(p_all + m.p_offset, m.rows, work);
  }

  // The r columns of one matrix's P (each `rows` long) made orthonormal.
  void Orthonormalize(float* p, size_t rows, std::vector<double>* work) const {
    work->resize(rows);
    double* v = work->data();
    for (size_t k = 0; k < rank_; ++k) {
      float* column = p + k * rows;
      double norm0 = 0;
      for (size_t i = 0; i < rows; ++i) {
        v[i] = column[i];
        norm0 += v[i] * v[i];
      }
      norm0 = std::sqrt(norm0);
      if (!std::isfinite(norm0)) {
        std::fill(column, column + rows, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      for (int pass = 0; pass < 2; ++pass) {
        for (size_t l = 0; l < k; ++l) {
          const float* basis = p + l * rows;
          double d = 0;
          for (size_t i = 0; i < rows; ++i) d += basis[i] * v[i];
          for (size_t i = 0; i < rows; ++i) v[i] -= d * basis[i];
        }
      }
      double norm = 0;
      for (size_t i = 0; i < rows; ++i) norm += v[i] * v[i];
      norm = std::sqrt(norm);
      if (norm0 == 0 || !(norm > 1e-5 * norm0)) {
        std::fill(column, column + rows, 0.0f);
      } else {
        for (size_t i = 0; i < rows; ++i) column[i] = static_cast<float>(v[i] / norm);
      }
    }
  }

  // out = P Q^T on every matrix's elements.
  void Reconstruct(const float* p_all, const float* q_all, float* out) const {
    for (const Matrix& m : matrices_) {
      const float* p = p_all + m.p_offset;
      const float* q = q_all + m.q_offset;
      for (size_t i = 0; i < m.rows; ++i) {
        float* o = out + m.offset + i * m.cols;
        const float p0 = p[i];
        for (size_t j = 0; j < m.cols; ++j) o[j] = p0 * q[j];
        for (size_t k = 1; k < rank_; ++k) {
          const float pk = p[k * m.rows + i];
          const float* qk = q + k * m.cols;
          for (size_t j = 0; j < m.cols; ++j) o[j] += pk * qk[j];
        }
      }
    }
  }

  // residual = x - P Q^T on the matrices, 0 on what was sent uncompressed.
  void UpdateError() {
    Reconstruct(p_.data(), q_new_.data(), error_.data());
    for (const Matrix& m : matrices_) {
      float* e = error_.data() + m.offset;
      const float* x = x_.data() + m.offset;
      for (size_t i = 0; i < m.rows * m.cols; ++i) e[i] = x[i] - e[i];
    }
    for (const Segment& s : raw_) std::fill_n(error_.data() + s.offset, s.length, 0.0f);
  }

  void WriteRaw(const float* from, char* to) const {
    for (const Segment& s : raw_) {
      std::memcpy(to, from + s.offset, s.length * sizeof(float));
      to += s.length * sizeof(float);
    }
  }

  void ReadRaw(const char* from, float* to) const {
    for (const Segment& s : raw_) {
      std::memcpy(to + s.offset, from, s.length * sizeof(float));
      from += s.length * sizeof(float);
    }
  }

  const size_t rank_;
  const v1::FactorPrecision factors_;  // never UNSPECIFIED
  std::vector<Matrix> matrices_;
  // Each factor column (of `rows` in P, `cols` in Q), matrix by matrix.
  std::vector<Segment> p_columns_;
  std::vector<Segment> q_columns_;
  std::vector<Segment> raw_;
  size_t p_size_ = 0;
  size_t q_size_ = 0;
  size_t raw_size_ = 0;
  uint64_t config_ = 0;

  std::vector<float> error_;   // residual, n
  std::vector<float> q_;       // warm start, q_size_
  std::vector<float> q_init_;  // from the seed, q_size_
  // Step in progress: the compensated gradient, P, the new Q.
  std::vector<float> x_;
  std::vector<float> p_;
  std::vector<float> q_new_;
  std::vector<double> work_;
  std::vector<float> factor_scratch_;
};

}  // namespace

std::unique_ptr<Codec> MakePowerSgdCodec(const std::vector<std::vector<int64_t>>& shapes, size_t n,
                                         uint32_t rank, v1::FactorPrecision factors,
                                         uint64_t seed) {
  return std::make_unique<PowerSgdCodec>(shapes, n, rank, factors, seed);
}

}  // namespace tandem::codec_internal
