// topk: sends the k = clamp(round(ratio * n), 1, n) elements of the
// compensated gradient x = grad + residual that are largest in magnitude, as
// exact fp32; the rest stays in the residual (error feedback, state
// "codec.error"), so every element is sent eventually.
//
// Selection is defined without reference to a sort's tie-breaking: the k-th
// largest |x| is the threshold t; every element with |x| > t is kept, then the
// elements with |x| == t in increasing index order until there are k.
// Magnitudes compare as the integer bits of |x| (NaN above infinity).
//
// Body:
//   u8  format   0 = delta varint, 1 = bitmap (whichever is smaller; varint on a tie)
//   u64 index bytes
//   indices      varint: the first index, then each gap minus one, LEB128;
//                bitmap: ceil(n / 8) bytes, bit i % 8 of byte i / 8 set for a kept
//                index, the bits past n zero
//   k fp32       the kept values in increasing index order
// At ratio 0.01 the gaps are mostly below 128, one varint byte each:
// ~5 bytes per kept element, a payload ratio of ~0.013.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "transport/codecs/codecs.h"
#include "transport/codecs/wire.h"

namespace tandem::codec_internal {
namespace {

enum IndexFormat : uint8_t { kVarint = 0, kBitmap = 1 };

class TopkCodec final : public Codec {
 public:
  TopkCodec(size_t n, size_t k) : Codec(n), k_(k), error_(n, 0.0f) {}

  v1::CodecKind kind() const override { return v1::CODEC_KIND_TOPK; }

  absl::Status EncodeImpl(const float* grad, std::string* payload) override {
    const size_t n = size();
    float* x = error_.data();
    magnitudes_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      x[i] += grad[i];
      magnitudes_[i] = FloatBits(x[i]) & 0x7fffffff;
    }
    std::nth_element(magnitudes_.begin(), magnitudes_.begin() + static_cast<ptrdiff_t>(k_ - 1),
                     magnitudes_.end(), std::greater<uint32_t>());
    const uint32_t threshold = magnitudes_[k_ - 1];
    size_t above = 0;
    for (size_t i = 0; i < n; ++i) above += (FloatBits(x[i]) & 0x7fffffff) > threshold;
    size_t ties = k_ - above;

    indices_.clear();
    values_.clear();
    indices_.reserve(k_);
    values_.reserve(k_);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t m = FloatBits(x[i]) & 0x7fffffff;
      if (m > threshold || (m == threshold && ties > 0)) {
        ties -= m == threshold;
        indices_.push_back(i);
        values_.push_back(x[i]);
        x[i] = 0.0f;
      }
    }

    size_t varint_bytes = 0;
    for (size_t j = 0; j < k_; ++j) {
      varint_bytes += VarintSize(j == 0 ? indices_[0] : indices_[j] - indices_[j - 1] - 1);
    }
    const size_t bitmap_bytes = (n + 7) / 8;
    const IndexFormat format = bitmap_bytes < varint_bytes ? kBitmap : kVarint;
    const uint64_t index_bytes = format == kBitmap ? bitmap_bytes : varint_bytes;

    char* body = StartPayload(header(), 1 + 8 + index_bytes + k_ * sizeof(float), payload);
    body[0] = static_cast<char>(format);
    std::memcpy(body + 1, &index_bytes, 8);
    auto* index = reinterpret_cast<uint8_t*>(body + 9);
    if (format == kBitmap) {
      std::memset(index, 0, bitmap_bytes);
      for (uint64_t i : indices_) index[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    } else {
      for (size_t j = 0; j < k_; ++j) {
        uint64_t v = j == 0 ? indices_[0] : indices_[j] - indices_[j - 1] - 1;
        while (v >= 0x80) {
          *index++ = static_cast<uint8_t>((v & 0x7f) | 0x80);
          v >>= 7;
        }
        *index++ = static_cast<uint8_t>(v);
      }
    }
    std::memcpy(body + 9 + index_bytes, values_.data(), k_ * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status Decode(const std::string& payload, float* out, size_t n) const override {
    if (absl::Status s = CheckSize(n, size()); !s.ok()) return s;
    absl::StatusOr<absl::string_view> body = ParseHeader(payload, header());
    if (!body.ok()) return body.status();
    Reader reader(*body);
    absl::StatusOr<const char*> head = reader.Take(9);
    if (!head.ok()) return head.status();
    const auto format = static_cast<uint8_t>((*head)[0]);
    uint64_t index_bytes;
    std::memcpy(&index_bytes, *head + 1, 8);
    if (index_bytes > reader.remaining() ||
        reader.remaining() - index_bytes != k_ * sizeof(float)) {
      return absl::DataLossError(absl::StrCat("topk payload body of ", body->size(),
                                              " bytes does not hold ", index_bytes,
                                              " index bytes and ", k_, " values"));
    }
    absl::StatusOr<const char*> index = reader.Take(index_bytes);
    if (!index.ok()) return index.status();
    const char* values = body->data() + body->size() - k_ * sizeof(float);

    std::fill(out, out + n, 0.0f);
    if (format == kBitmap) {
      if (index_bytes != (n + 7) / 8) return absl::DataLossError("topk bitmap of the wrong size");
      const auto* bits = reinterpret_cast<const uint8_t*>(*index);
      size_t j = 0;
      for (size_t i = 0; i < n; ++i) {
        if ((bits[i / 8] >> (i % 8)) & 1) {
          if (j == k_) return absl::DataLossError("topk bitmap marks more than k indices");
          std::memcpy(&out[i], values + j * sizeof(float), sizeof(float));
          ++j;
        }
      }
      if (j != k_) return absl::DataLossError("topk bitmap marks fewer than k indices");
      if (n % 8 != 0 && (bits[n / 8] >> (n % 8)) != 0) {
        return absl::DataLossError("topk bitmap marks indices past the end");
      }
    } else if (format == kVarint) {
      Reader indices(absl::string_view(*index, index_bytes));
      uint64_t next = 0;  // the smallest index the next entry may have
      for (size_t j = 0; j < k_; ++j) {
        absl::StatusOr<uint64_t> gap = indices.Varint();
        if (!gap.ok()) return gap.status();
        if (next >= n || *gap >= n - next) {
          return absl::DataLossError("topk payload has an index past the end");
        }
        const uint64_t i = next + *gap;
        std::memcpy(&out[i], values + j * sizeof(float), sizeof(float));
        next = i + 1;
      }
      if (indices.remaining() != 0) {
        return absl::DataLossError("topk payload has bytes after its k indices");
      }
    } else {
      return absl::DataLossError(absl::StrCat("topk payload has unknown index format ", format));
    }
    return absl::OkStatus();
  }

  CodecState State() const override { return {{kCodecErrorState, error_}}; }

  absl::Status LoadStateImpl(const CodecState& state) override {
    return LoadErrorState(v1::CODEC_KIND_TOPK, size(), state, &error_);
  }

 protected:
  std::vector<float>* mutable_residual() override { return &error_; }

 private:
  Header header() const { return {v1::CODEC_KIND_TOPK, PayloadRole::kComplete, size(), k_}; }

  const size_t k_;
  // The residual; during Encode first the compensated gradient.
  std::vector<float> error_;
  // Scratch of Encode.
  std::vector<uint32_t> magnitudes_;
  std::vector<uint64_t> indices_;
  std::vector<float> values_;
};

}  // namespace

std::unique_ptr<Codec> MakeTopkCodec(size_t n, double ratio) {
  const double k = std::round(ratio * static_cast<double>(n));
  return std::make_unique<TopkCodec>(n, std::clamp<size_t>(static_cast<size_t>(k), 1, n));
}

}  // namespace tandem::codec_internal
