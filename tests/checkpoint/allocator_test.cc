#include "checkpoint/allocator.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <string>
#include <vector>

#include "checkpoint/checkpoint_store.h"
#include "tests/support/byte_tensors.h"
#include "tests/support/run_tandem.h"

namespace tandem {
namespace {

using testing::Owned;
using testing::Pattern;
using testing::Views;

long MinorFaults() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

v1::CheckpointManifest Header(uint64_t step) {
  v1::CheckpointManifest m;
  m.set_job("job");
  m.set_step(step);
  return m;
}

// The point of the settings: a save after a process's first reuses the
// memory the last one's memtables freed instead of faulting in fresh pages
// (without them, each save of 64 MiB faults in ~16,000 pages here).
TEST(AllocatorTest, ALaterSaveFaultsInFewPages) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer brings its own malloc, which mallopt does not tune";
#endif
  ASSERT_TRUE(KeepFreedMemoryForCheckpoints());
  testing::TempDir dir;
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir.Join("s"));
  ASSERT_TRUE(store.ok()) << store.status();
  constexpr size_t kMiB = size_t{1} << 20;
  std::vector<Owned> state;
  for (uint32_t i = 0; i < 4; ++i)
    state.push_back({"t" + std::to_string(i), Pattern(16 * kMiB, i)});

  ASSERT_TRUE((*store)->Save(Header(1), Views(state), 0).ok());
  // Every chunk changes, so the next save writes all 64 MiB again.
  for (Owned& t : state) {
    for (size_t offset = 0; offset < t.bytes.size(); offset += 4 * kMiB) t.bytes[offset] ^= 1;
  }
  const long before = MinorFaults();
  absl::StatusOr<v1::CheckpointManifest> second = (*store)->Save(Header(2), Views(state), 0);
  const long faults = MinorFaults() - before;
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_LT(faults, 2000) << "minor page faults during the second 64 MiB save";
}

}  // namespace
}  // namespace tandem
