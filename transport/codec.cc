#include "transport/codec.h"

#include "absl/strings/str_cat.h"
#include "transport/codecs/codecs.h"
#include "transport/codecs/wire.h"

namespace tandem {
namespace {

// 2^40 floats: far beyond any gradient, small enough that byte counts of
// payloads never overflow.
constexpr size_t kMaxElements = size_t{1} << 40;
constexpr uint32_t kMaxPowerSgdRank = 1024;

}  // namespace

absl::Status Codec::Encode(const float* grad, size_t n, std::string* payload) {
  if (absl::Status s = codec_internal::CheckSize(n, size()); !s.ok()) return s;
  AbortStep();
  return EncodeImpl(grad, payload);
}

absl::Status Codec::LoadState(const CodecState& state) {
  AbortStep();
  return LoadStateImpl(state);
}

void Codec::AbortStep() {
  if (residual_saved_) mutable_residual()->swap(saved_residual_);
  residual_saved_ = false;
  round_ = 0;
}

void Codec::SaveResidual() {
  saved_residual_ = *mutable_residual();  // reuses the buffer of earlier steps
  residual_saved_ = true;
}

void Codec::CommitStep() {
  residual_saved_ = false;
  round_ = 0;
}

absl::Status Codec::BeginStep(const float* grad, size_t n, std::string* payload) {
  if (absl::Status s = codec_internal::CheckSize(n, size()); !s.ok()) return s;
  AbortStep();
  if (mutable_residual() != nullptr) SaveResidual();
  if (absl::Status s = EncodeImpl(grad, payload); !s.ok()) {
    AbortStep();
    return s;
  }
  round_ = 1;
  return absl::OkStatus();
}

absl::Status Codec::NextRound(absl::Span<const std::string> payloads, std::string* payload) {
  return absl::FailedPreconditionError(absl::StrCat("codec ", codec_internal::KindName(kind()),
                                                    " has a single round: call FinishStep"));
}

absl::Status Codec::FinishStep(absl::Span<const std::string> payloads, float* out, size_t n) {
  if (round_ != 1) {
    return absl::FailedPreconditionError("FinishStep without a BeginStep of this step");
  }
  if (absl::Status s = codec_internal::CheckSize(n, size()); !s.ok()) return s;
  if (payloads.empty()) return absl::InvalidArgumentError("FinishStep needs every party's payload");
  // Adding in party order makes the sum identical on every party.
  if (absl::Status s = Decode(payloads[0], out, n); !s.ok()) return s;
  scratch_.resize(n);
  for (size_t p = 1; p < payloads.size(); ++p) {
    if (absl::Status s = Decode(payloads[p], scratch_.data(), n); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("party ", p, ": ", s.message()));
    }
    for (size_t i = 0; i < n; ++i) out[i] += scratch_[i];
  }
  CommitStep();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Codec>> MakeCodec(
    const v1::ExchangeSpec& spec, const std::vector<std::vector<int64_t>>& tensor_shapes,
    uint64_t seed) {
  size_t n = 0;
  for (size_t t = 0; t < tensor_shapes.size(); ++t) {
    size_t numel = 1;
    for (int64_t dim : tensor_shapes[t]) {
      if (dim < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", t, " has a negative dimension ", dim));
      }
      if (dim != 0 && numel > (kMaxElements / static_cast<size_t>(dim))) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", t, " is too large"));
      }
      numel *= static_cast<size_t>(dim);
    }
    n += numel;
    if (n > kMaxElements) return absl::InvalidArgumentError("gradient too large for a codec");
  }
  if (n == 0) return absl::InvalidArgumentError("a codec needs a gradient of at least one element");
  switch (spec.codec()) {
    case v1::CODEC_KIND_NONE:
    case v1::CODEC_KIND_FP16:
    case v1::CODEC_KIND_BF16:
      return codec_internal::MakeElementwiseCodec(spec.codec(), n);
    case v1::CODEC_KIND_INT8:
      return codec_internal::MakeInt8Codec(n);
    case v1::CODEC_KIND_TOPK:
      if (!(spec.topk_ratio() > 0 && spec.topk_ratio() <= 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("topk ratio must be in (0, 1], got ", spec.topk_ratio()));
      }
      return codec_internal::MakeTopkCodec(n, spec.topk_ratio());
    case v1::CODEC_KIND_POWERSGD:
      if (spec.rank() == 0 || spec.rank() > kMaxPowerSgdRank) {
        return absl::InvalidArgumentError(absl::StrCat("powersgd rank must be in [1, ",
                                                       kMaxPowerSgdRank, "], got ", spec.rank()));
      }
      switch (spec.factors()) {
        case v1::FACTOR_PRECISION_UNSPECIFIED:
        case v1::FACTOR_PRECISION_FP32:
        case v1::FACTOR_PRECISION_FP16:
        case v1::FACTOR_PRECISION_INT8:
          break;
        default:
          return absl::InvalidArgumentError(
              absl::StrCat("no powersgd factor precision ", static_cast<int>(spec.factors())));
      }
      return codec_internal::MakePowerSgdCodec(tensor_shapes, n, spec.rank(), spec.factors(), seed);
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("no codec for CodecKind ", static_cast<int>(spec.codec())));
  }
}

}  // namespace tandem
