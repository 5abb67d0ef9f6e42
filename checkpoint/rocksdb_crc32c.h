// Hardware CRC32C for RocksDB's blob, WAL and table checksums.
//
// Debian's RocksDB 7.8 is built without SSE4.2, so rocksdb::crc32c::Extend
// runs a table-driven CRC32C at ~1 GB/s; every byte a save writes to a blob
// file goes through it (as much CPU as hashing the chunk). Every target that
// links tandem_checkpoint links RocksDB's calls to that function to
// RocksDbCrc32cExtend instead (the linker's --wrap, see
// checkpoint/CMakeLists.txt), which computes the same CRC32C with the CPU's
// crc32 instruction where it has one and calls RocksDB's own code where not.
// The checksums on disk are unchanged: stock RocksDB tools (ldb) read and
// verify the files as before.
#ifndef TANDEM_CHECKPOINT_ROCKSDB_CRC32C_H_
#define TANDEM_CHECKPOINT_ROCKSDB_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace tandem {

// rocksdb::crc32c::Extend: the CRC32C of `data` continuing from `crc` (the
// CRC32C of what came before it; 0 to start).
uint32_t RocksDbCrc32cExtend(uint32_t crc, const char* data, size_t bytes);

// Whether RocksDbCrc32cExtend uses the CPU's crc32 instruction.
bool RocksDbCrc32cIsAccelerated();

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_ROCKSDB_CRC32C_H_
