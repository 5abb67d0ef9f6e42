#include "checkpoint/rocksdb_crc32c.h"

#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

// RocksDB's own definition, reachable under this name because of --wrap.
extern "C" uint32_t __real__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t bytes);

// What RocksDB's calls to rocksdb::crc32c::Extend link to.
extern "C" uint32_t __wrap__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t bytes) {
  return tandem::RocksDbCrc32cExtend(crc, data, bytes);
}

namespace tandem {
namespace {

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t ExtendSse42(uint32_t crc, const char* data,
                                                       size_t bytes) {
  uint64_t l = crc ^ 0xffffffffu;
  for (; bytes > 0 && (reinterpret_cast<uintptr_t>(data) & 7) != 0; --bytes, ++data) {
    l = _mm_crc32_u8(static_cast<uint32_t>(l), static_cast<uint8_t>(*data));
  }
  for (; bytes >= 8; bytes -= 8, data += 8) {
    uint64_t word;
    std::memcpy(&word, data, sizeof(word));
    l = _mm_crc32_u64(l, word);
  }
  for (; bytes > 0; --bytes, ++data) {
    l = _mm_crc32_u8(static_cast<uint32_t>(l), static_cast<uint8_t>(*data));
  }
  return static_cast<uint32_t>(l) ^ 0xffffffffu;
}
#endif

// A function, not a global: RocksDB may compute a CRC during static
// initialization, before a global of this file would be set.
bool DetectSse42() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
#else
  return false;
#endif
}

bool Accelerated() {
  static const bool accelerated = DetectSse42();
  return accelerated;
}

}  // namespace

uint32_t RocksDbCrc32cExtend(uint32_t crc, const char* data, size_t bytes) {
#if defined(__x86_64__)
  if (Accelerated()) return ExtendSse42(crc, data, bytes);
#endif
  return __real__ZN7rocksdb6crc32c6ExtendEjPKcm(crc, data, bytes);
}

bool RocksDbCrc32cIsAccelerated() { return Accelerated(); }

}  // namespace tandem
