// none, fp16, bf16: each element on its own, no state. The body is the n
// elements as fp32, IEEE half or bfloat16 (little-endian), rounded to nearest
// even. No error feedback: the rounding error of one element is at most half a
// unit in the last place (2^-11 relative for fp16 in its normal range, 2^-8
// for bf16) and unbiased, which plain SGD tolerates; fp16 overflows to
// infinity beyond 65504 and loses what is below 2^-24, so use bf16 for
// gradients of unknown scale.
#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "transport/codecs/codecs.h"
#include "transport/codecs/wire.h"

namespace tandem::codec_internal {
namespace {

class ElementwiseCodec final : public Codec {
 public:
  ElementwiseCodec(v1::CodecKind kind, size_t n) : Codec(n), kind_(kind) {}

  v1::CodecKind kind() const override { return kind_; }

  absl::Status EncodeImpl(const float* grad, std::string* payload) override {
    const size_t n = size();
    char* body = StartPayload(header(), n * ElementBytes(), payload);
    switch (kind_) {
      case v1::CODEC_KIND_FP16:
        Narrow<FloatToHalf>(grad, n, body);
        break;
      case v1::CODEC_KIND_BF16:
        Narrow<FloatToBfloat16>(grad, n, body);
        break;
      default:
        std::memcpy(body, grad, n * sizeof(float));
        break;
    }
    return absl::OkStatus();
  }

  absl::Status Decode(const std::string& payload, float* out, size_t n) const override {
    if (absl::Status s = CheckSize(n, size()); !s.ok()) return s;
    absl::StatusOr<absl::string_view> body = ParseHeader(payload, header());
    if (!body.ok()) return body.status();
    if (body->size() != n * ElementBytes()) {
      return absl::DataLossError(absl::StrCat(KindName(kind_), " payload body has ", body->size(),
                                              " bytes, expected ", n * ElementBytes()));
    }
    switch (kind_) {
      case v1::CODEC_KIND_FP16:
        Widen<HalfToFloat>(body->data(), n, out);
        break;
      case v1::CODEC_KIND_BF16:
        Widen<Bfloat16ToFloat>(body->data(), n, out);
        break;
      default:
        std::memcpy(out, body->data(), n * sizeof(float));
        break;
    }
    return absl::OkStatus();
  }

  CodecState State() const override { return {}; }

  absl::Status LoadStateImpl(const CodecState& state) override {
    if (state.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("codec ", KindName(kind_), " has no state, got \"", state[0].first, "\""));
  }

 private:
  template <uint16_t (*kToBits)(float)>
  static void Narrow(const float* in, size_t n, char* out) {
    constexpr size_t kBlock = 1024;
    uint16_t block[kBlock];
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t len = std::min(kBlock, n - i);
      for (size_t j = 0; j < len; ++j) block[j] = kToBits(in[i + j]);
      std::memcpy(out + 2 * i, block, 2 * len);
    }
  }

  template <float (*kFromBits)(uint16_t)>
  static void Widen(const char* in, size_t n, float* out) {
    constexpr size_t kBlock = 1024;
    uint16_t block[kBlock];
    for (size_t i = 0; i < n; i += kBlock) {
      const size_t len = std::min(kBlock, n - i);
      std::memcpy(block, in + 2 * i, 2 * len);
      for (size_t j = 0; j < len; ++j) out[i + j] = kFromBits(block[j]);
    }
  }

  size_t ElementBytes() const { return kind_ == v1::CODEC_KIND_NONE ? 4 : 2; }
  Header header() const { return {kind_, PayloadRole::kComplete, size(), 0}; }

  const v1::CodecKind kind_;
};

}  // namespace

std::unique_ptr<Codec> MakeElementwiseCodec(v1::CodecKind kind, size_t n) {
  return std::make_unique<ElementwiseCodec>(kind, n);
}

}  // namespace tandem::codec_internal
