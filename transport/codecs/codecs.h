// The six codec implementations behind transport/codec.h (internal to
// transport/; MakeCodec validates the arguments before calling these).
#ifndef TANDEM_TRANSPORT_CODECS_CODECS_H_
#define TANDEM_TRANSPORT_CODECS_CODECS_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "transport/codec.h"

namespace tandem::codec_internal {

// none, fp16 or bf16: element by element, no state.
std::unique_ptr<Codec> MakeElementwiseCodec(v1::CodecKind kind, size_t n);
std::unique_ptr<Codec> MakeInt8Codec(size_t n);
// ratio in (0, 1].
std::unique_ptr<Codec> MakeTopkCodec(size_t n, double ratio);
// rank >= 1; shapes with non-negative dimensions; factors a valid value
// (UNSPECIFIED means FP32).
std::unique_ptr<Codec> MakePowerSgdCodec(const std::vector<std::vector<int64_t>>& shapes, size_t n,
                                         uint32_t rank, v1::FactorPrecision factors,
                                         uint64_t seed);

}  // namespace tandem::codec_internal

#endif  // TANDEM_TRANSPORT_CODECS_CODECS_H_
