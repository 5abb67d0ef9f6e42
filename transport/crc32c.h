// CRC32C (Castagnoli, the checksum of iSCSI, ext4 and gRPC's own frame
// checks): what every exchange frame carries to catch corruption that TCP's
// 16-bit checksum and a misbehaving middlebox let through.
//
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at run
// time) and a table otherwise; both give the same value. Thread-safe.
#ifndef TANDEM_TRANSPORT_CRC32C_H_
#define TANDEM_TRANSPORT_CRC32C_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace tandem {

// The CRC32C of `data` continued from `crc`, the CRC32C of the bytes before
// it (0 for none): Crc32cExtend(Crc32c(a), b) == Crc32c(a + b).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size);

inline uint32_t Crc32c(absl::string_view data) { return Crc32cExtend(0, data.data(), data.size()); }

namespace crc32c_internal {
// The two implementations, so tests can compare them.
uint32_t ExtendPortable(uint32_t crc, const void* data, size_t size);
bool HardwareAvailable();
// Only where HardwareAvailable().
uint32_t ExtendHardware(uint32_t crc, const void* data, size_t size);
}  // namespace crc32c_internal

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_CRC32C_H_
