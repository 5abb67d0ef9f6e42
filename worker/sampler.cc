#include "worker/sampler.h"

#include <algorithm>

namespace tandem {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, bound) without modulo bias (Lemire's method).
uint64_t Bounded(uint64_t& state, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(SplitMix64(state)) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = -bound % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(SplitMix64(state)) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

}  // namespace

GlobalSampler::GlobalSampler(uint64_t dataset_size, uint32_t global_batch, uint64_t seed)
    : dataset_size_(dataset_size), global_batch_(global_batch), seed_(seed) {}

uint64_t GlobalSampler::StepsPerEpoch() const {
  return (dataset_size_ + global_batch_ - 1) / global_batch_;
}

uint64_t GlobalSampler::TotalSteps(uint32_t epochs, uint64_t max_steps) const {
  const uint64_t steps = StepsPerEpoch() * epochs;
  return max_steps == 0 ? steps : std::min(steps, max_steps);
}

std::vector<uint32_t> GlobalSampler::EpochOrder(uint32_t epoch) const {
  std::vector<uint32_t> order(dataset_size_);
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  uint64_t state = seed_ ^ (0xa0761d6478bd642fULL * (uint64_t{epoch} + 1));
  for (uint64_t i = order.size(); i > 1; --i) {
    std::swap(order[i - 1], order[Bounded(state, i)]);
  }
  return order;
}

std::vector<uint32_t> GlobalSampler::GlobalBatch(uint64_t cursor) {
  const uint32_t epoch = EpochAt(cursor);
  if (epoch != cached_epoch_) {
    cached_order_ = EpochOrder(epoch);
    cached_epoch_ = epoch;
  }
  const uint64_t begin = cursor % dataset_size_;
  const uint64_t end = std::min<uint64_t>(begin + global_batch_, dataset_size_);
  return std::vector<uint32_t>(cached_order_.begin() + begin, cached_order_.begin() + end);
}

std::pair<uint32_t, uint32_t> GlobalSampler::RankSlice(uint32_t batch_size, uint32_t rank,
                                                       uint32_t ranks) {
  const uint32_t base = batch_size / ranks;
  const uint32_t extra = batch_size % ranks;
  const uint32_t begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

}  // namespace tandem
