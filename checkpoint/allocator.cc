#include "checkpoint/allocator.h"

#include <malloc.h>

namespace tandem {
namespace {

// glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): a
// memtable's chunk blocks (4 MiB) and its arena blocks stay below it.
constexpr int kMmapThresholdBytes = 32 << 20;
// Freed memory malloc keeps before it gives any back: a save's memtables
// (4 x 32 MiB) several times over.
constexpr int kTrimThresholdBytes = 1 << 30;

}  // namespace

bool KeepFreedMemoryForCheckpoints() {
  const bool mmap_set = mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes) == 1;
  const bool trim_set = mallopt(M_TRIM_THRESHOLD, kTrimThresholdBytes) == 1;
  return mmap_set && trim_set;
}

}  // namespace tandem
