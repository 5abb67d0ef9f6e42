// What the codecs share (internal to transport/): the payload header, bounds-
// checked reading of a payload body, and the integer-only fp16/bf16 rounding
// that makes every machine encode the same bits.
//
// Header, 24 bytes, little-endian:
//   0  "TDCG"        magic
//   4  u8  kind      v1::CodecKind
//   5  u8  version   kCodecWireVersion
//   6  u8  role      PayloadRole
//   7  u8  0
//   8  u64 n         elements of the gradient
//   16 u64 config    fingerprint of what else both sides must agree on
//                    (int8 chunk, topk k, powersgd rank and shapes)
#ifndef TANDEM_TRANSPORT_CODECS_WIRE_H_
#define TANDEM_TRANSPORT_CODECS_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tandem/v1/job.pb.h"
#include "transport/codec.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "codec payloads copy floats and integers in host order, which must be little-endian");

namespace tandem::codec_internal {

inline constexpr uint8_t kCodecWireVersion = 1;
inline constexpr size_t kHeaderSize = 24;

// What a payload is: a whole step of one party (Decode), or one round of
// PowerSGD's multi-party step.
enum class PayloadRole : uint8_t {
  kComplete = 0,
  kPowerSgdP = 1,
  kPowerSgdQ = 2,
};

struct Header {
  v1::CodecKind kind;
  PayloadRole role;
  uint64_t n;
  uint64_t config;
};

// Makes *payload the header followed by `body_size` bytes of unspecified
// content (reusing its buffer: no allocation or zero-filling from step to
// step) and returns where the body starts.
char* StartPayload(const Header& header, size_t body_size, std::string* payload);

// The body of `payload` if its header matches `expected`; InvalidArgument for
// another codec, version, role, n or config; DataLoss if it is not a codec
// payload at all or shorter than a header.
absl::StatusOr<absl::string_view> ParseHeader(const std::string& payload, const Header& expected);

// "n = 5 elements given, codec made for 7" as InvalidArgument, or Ok.
absl::Status CheckSize(size_t given, size_t expected);

absl::string_view KindName(v1::CodecKind kind);

// Loads the state of a codec whose only state is its error-feedback residual
// (int8, topk): exactly kCodecErrorState of `n` floats, else InvalidArgument.
absl::Status LoadErrorState(v1::CodecKind kind, size_t n, const CodecState& state,
                            std::vector<float>* error);

// Sequential reads from a body that fail with DataLoss instead of running past
// its end.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}

  size_t remaining() const { return data_.size() - pos_; }
  // The next `bytes` bytes, or DataLoss.
  absl::StatusOr<const char*> Take(size_t bytes);
  absl::StatusOr<uint64_t> Varint();

 private:
  absl::string_view data_;
  size_t pos_ = 0;
};

// FNV-1a over 64-bit words: a cheap fingerprint of a codec's configuration.
class Fingerprint {
 public:
  void Add(uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      hash_ = (hash_ ^ ((v >> (8 * i)) & 0xff)) * 0x100000001b3ULL;
    }
  }
  uint64_t value() const { return hash_; }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

inline size_t VarintSize(uint64_t v) {
  size_t size = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++size;
  }
  return size;
}

inline uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float BitsFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// All ones if `condition`, else zero.
inline uint32_t Mask(bool condition) { return 0u - static_cast<uint32_t>(condition); }

// IEEE binary16, round to nearest even; overflow to infinity, NaN stays a
// (quiet) NaN, subnormals kept. Branch-free. Normal halves round in integer
// arithmetic; subnormal ones by adding 0.5f, whose last place is 2^-24, the
// half subnormal step: exact in the default rounding mode and unaffected by
// flush-to-zero (the sum is >= 0.5; a float subnormal rounds to 0 either way).
inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  const uint32_t r = ax - 0x38000000u;  // rebias the exponent (wraps below 2^-14)
  uint32_t normal = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  normal = normal < 0x7c00u ? normal : 0x7c00u;  // >= 65520 rounds to infinity
  const uint32_t subnormal = FloatBits(BitsFloat(ax) + 0.5f) - 0x3f000000u;
  const uint32_t special = 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
  // Masks rather than ?: so that GCC keeps the float add unconditional and
  // vectorizes the loop (it will not if-convert a float op under the default
  // -ftrapping-math).
  const uint32_t is_subnormal = Mask(ax < 0x38800000u);
  const uint32_t is_special = Mask(ax >= 0x7f800000u);
  uint32_t h = (subnormal & is_subnormal) | (normal & ~is_subnormal);
  h = (special & is_special) | (h & ~is_special);
  return static_cast<uint16_t>(sign | h);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = h & 0x7c00u;
  const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;
  uint32_t bits = shifted + 0x38000000u;                 // normal: rebias
  bits = exp == 0x7c00u ? shifted + 0x70000000u : bits;  // infinity, NaN
  const uint32_t subnormal = FloatBits(BitsFloat(0x3f000000u | (h & 0x3ffu)) - 0.5f);  // exact
  const uint32_t is_subnormal = Mask(exp == 0);
  return BitsFloat(sign | (subnormal & is_subnormal) | (bits & ~is_subnormal));
}

// bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t FloatToBfloat16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

inline float Bfloat16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

// Round half to even of v clamped to [-127, 127], by adding 1.5 * 2^23: exact
// in the default rounding mode, and branch-free so it vectorizes. A NaN passes
// the clamp and yields some code; callers make its scale NaN.
inline int8_t QuantizeInt8(float v) {
  v = v < -127.0f ? -127.0f : v;
  v = v > 127.0f ? 127.0f : v;
  const uint32_t bits = FloatBits(v + 12582912.0f) - 0x4b400000u;
  return static_cast<int8_t>(static_cast<uint8_t>(bits));
}

}  // namespace tandem::codec_internal

#endif  // TANDEM_TRANSPORT_CODECS_WIRE_H_
