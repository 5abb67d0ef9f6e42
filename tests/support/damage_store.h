// Test support: damages a checkpoint store the way a failing disk would, by
// opening its RocksDB database directly (with the options the store persisted)
// and flipping a bit of one stored chunk.
#ifndef TANDEM_TESTS_SUPPORT_DAMAGE_STORE_H_
#define TANDEM_TESTS_SUPPORT_DAMAGE_STORE_H_

#include <string>

#include "absl/status/status.h"

namespace tandem::testing {

// Flips one bit in the middle of the chunk stored under `sha256` (32 bytes) in
// the store at `dir`, which no process may hold open.
absl::Status FlipBitOfChunk(const std::string& dir, const std::string& sha256);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_DAMAGE_STORE_H_
