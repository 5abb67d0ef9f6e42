// int8: symmetric linear quantization with one fp32 scale per chunk of
// kInt8Chunk elements, with error feedback (always on: the residual of every
// element, at most scale/2, is added to the next step's gradient, so the
// quantization is unbiased over steps; state "codec.error").
//
// For the compensated gradient x = grad + residual, per chunk:
//   scale = max|x| / 127,  q = round_half_even(x * 127 / max|x|) in [-127, 127],
//   decoded = q * scale,   residual = x - decoded  (|residual| <= scale / 2).
// A chunk whose max|x| is below 2^-100 is sent as zeros (it stays in the
// residual); one holding an infinity or NaN gets a NaN scale, so it decodes to
// NaN and the training loop sees it.
// Body: ceil(n / kInt8Chunk) fp32 scales, then n int8. Ratio ~ 1/4.
#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "transport/codecs/codecs.h"
#include "transport/codecs/wire.h"

namespace tandem::codec_internal {
namespace {

constexpr size_t kInt8Chunk = 4096;
constexpr float kTiny = 0x1p-100f;

class Int8Codec final : public Codec {
 public:
  explicit Int8Codec(size_t n) : Codec(n), error_(n, 0.0f) {}

  v1::CodecKind kind() const override { return v1::CODEC_KIND_INT8; }

  absl::Status EncodeImpl(const float* grad, std::string* payload) override {
    const size_t n = size();
    const size_t chunks = Chunks(n);
    char* body = StartPayload(header(), chunks * sizeof(float) + n, payload);
    char* scales = body;
    auto* codes = reinterpret_cast<int8_t*>(body + chunks * sizeof(float));
    float* x = error_.data();
    for (size_t c = 0; c < chunks; ++c) {
      const size_t begin = c * kInt8Chunk;
      const size_t len = std::min(kInt8Chunk, n - begin);
      uint32_t max_bits = 0;  // of |x|: integer order, NaN above infinity
      for (size_t i = begin; i < begin + len; ++i) {
        x[i] += grad[i];
        max_bits = std::max(max_bits, FloatBits(x[i]) & 0x7fffffff);
      }
      const float max_abs = BitsFloat(max_bits);
      float scale = 0.0f;
      float inv = 0.0f;
      if (max_bits >= 0x7f800000) {
        scale = BitsFloat(0x7fc00000);
      } else if (max_abs >= kTiny) {
        scale = max_abs / 127.0f;
        inv = 127.0f / max_abs;
      }
      std::memcpy(scales + c * sizeof(float), &scale, sizeof scale);
      for (size_t i = begin; i < begin + len; ++i) {
        const int8_t q = QuantizeInt8(x[i] * inv);
        codes[i] = q;
        x[i] -= Dequantize(q, scale);
      }
    }
    return absl::OkStatus();
  }

  absl::Status Decode(const std::string& payload, float* out, size_t n) const override {
    if (absl::Status s = CheckSize(n, size()); !s.ok()) return s;
    absl::StatusOr<absl::string_view> body = ParseHeader(payload, header());
    if (!body.ok()) return body.status();
    const size_t chunks = Chunks(n);
    if (body->size() != chunks * sizeof(float) + n) {
      return absl::DataLossError(absl::StrCat("int8 payload body has ", body->size(),
                                              " bytes, expected ", chunks * sizeof(float) + n));
    }
    const char* scales = body->data();
    const auto* codes = reinterpret_cast<const int8_t*>(body->data() + chunks * sizeof(float));
    for (size_t c = 0; c < chunks; ++c) {
      float scale;
      std::memcpy(&scale, scales + c * sizeof(float), sizeof scale);
      const size_t begin = c * kInt8Chunk;
      const size_t end = std::min(n, begin + kInt8Chunk);
      for (size_t i = begin; i < end; ++i) out[i] = Dequantize(codes[i], scale);
    }
    return absl::OkStatus();
  }

  CodecState State() const override { return {{kCodecErrorState, error_}}; }

  absl::Status LoadStateImpl(const CodecState& state) override {
    return LoadErrorState(v1::CODEC_KIND_INT8, size(), state, &error_);
  }

 protected:
  std::vector<float>* mutable_residual() override { return &error_; }

 private:
  static size_t Chunks(size_t n) { return (n + kInt8Chunk - 1) / kInt8Chunk; }

  static float Dequantize(int8_t q, float scale) { return static_cast<float>(q) * scale; }

  Header header() const {
    return {v1::CODEC_KIND_INT8, PayloadRole::kComplete, size(), kInt8Chunk};
  }

  // The residual; during Encode first the compensated gradient.
  std::vector<float> error_;
};

}  // namespace

std::unique_ptr<Codec> MakeInt8Codec(size_t n) { return std::make_unique<Int8Codec>(n); }

}  // namespace tandem::codec_internal
