// GlobalSampler: the order in which a job reads its data, independent of how
// many pools and ranks read it.
//
// Epoch e reads a permutation of the dataset drawn from (seed, e) with our own
// generator (splitmix64 + Fisher-Yates), so the order is the same on every
// machine and library version. A job's position is its global cursor: the
// number of samples consumed since the job began. A step takes the next
// `global_batch` samples of the current epoch (fewer at the epoch's end); each
// rank of the layout reads a contiguous slice of that batch. Changing the
// layout between steps therefore neither skips nor repeats a sample.
// Immutable after construction apart from a cached permutation; not
// thread-safe.
#ifndef TANDEM_WORKER_SAMPLER_H_
#define TANDEM_WORKER_SAMPLER_H_

#include <cstdint>
#include <utility>
#include <vector>

namespace tandem {

class GlobalSampler {
 public:
  GlobalSampler(uint64_t dataset_size, uint32_t global_batch, uint64_t seed);

  uint64_t dataset_size() const { return dataset_size_; }
  uint64_t StepsPerEpoch() const;
  // Steps a job of `epochs` epochs runs, capped by `max_steps` when non-zero.
  uint64_t TotalSteps(uint32_t epochs, uint64_t max_steps) const;

  uint32_t EpochAt(uint64_t cursor) const { return static_cast<uint32_t>(cursor / dataset_size_); }
  // Sample indices of the global batch that starts at `cursor`.
  std::vector<uint32_t> GlobalBatch(uint64_t cursor);
  // The permutation of epoch `epoch`.
  std::vector<uint32_t> EpochOrder(uint32_t epoch) const;

  // [begin, end) of the slice of a batch of `batch_size` that rank `rank` of
  // `ranks` reads: sizes differ by at most one, lower ranks take the extra.
  static std::pair<uint32_t, uint32_t> RankSlice(uint32_t batch_size, uint32_t rank,
                                                 uint32_t ranks);

 private:
  uint64_t dataset_size_;
  uint32_t global_batch_;
  uint64_t seed_;
  uint32_t cached_epoch_ = UINT32_MAX;
  std::vector<uint32_t> cached_order_;
};

}  // namespace tandem

#endif  // TANDEM_WORKER_SAMPLER_H_
