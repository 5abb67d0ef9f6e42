#include "worker/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

namespace tandem {
namespace {

TEST(GlobalSamplerTest, EpochOrderIsAPermutation) {
  GlobalSampler sampler(1000, 32, 7);
  std::vector<uint32_t> order = sampler.EpochOrder(0);
  std::vector<uint32_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  std::vector<uint32_t> identity(1000);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(sorted, identity);
  EXPECT_NE(order, identity);
}

TEST(GlobalSamplerTest, OrderDependsOnSeedAndEpochOnly) {
  GlobalSampler a(500, 16, 3);
  GlobalSampler b(500, 64, 3);  // batch size does not change the order
  GlobalSampler c(500, 16, 4);
  EXPECT_EQ(a.EpochOrder(0), b.EpochOrder(0));
  EXPECT_NE(a.EpochOrder(0), a.EpochOrder(1));
  EXPECT_NE(a.EpochOrder(0), c.EpochOrder(0));
}

TEST(GlobalSamplerTest, KnownOrderIsStableAcrossBuilds) {
  // Pinned: a change to the generator would silently change every job's data
  // order and make old checkpoints resume on another order.
  GlobalSampler sampler(10, 4, 1);
  EXPECT_EQ(sampler.EpochOrder(0), (std::vector<uint32_t>{2, 0, 6, 4, 1, 8, 7, 5, 9, 3}));
  EXPECT_EQ(sampler.EpochOrder(1), (std::vector<uint32_t>{2, 1, 0, 9, 6, 3, 7, 4, 8, 5}));
  EXPECT_EQ(sampler.GlobalBatch(0), (std::vector<uint32_t>{2, 0, 6, 4}));
  EXPECT_EQ(sampler.GlobalBatch(8), (std::vector<uint32_t>{9, 3}));
  EXPECT_EQ(sampler.GlobalBatch(10), (std::vector<uint32_t>{2, 1, 0, 9}));
}

TEST(GlobalSamplerTest, StepsAndPartialLastBatch) {
  GlobalSampler sampler(10, 4, 1);
  EXPECT_EQ(sampler.StepsPerEpoch(), 3u);
  EXPECT_EQ(sampler.TotalSteps(2, 0), 6u);
  EXPECT_EQ(sampler.TotalSteps(2, 4), 4u);
  EXPECT_EQ(sampler.GlobalBatch(8).size(), 2u);  // the last batch of epoch 0
  EXPECT_EQ(sampler.EpochAt(10), 1u);
  EXPECT_EQ(sampler.GlobalBatch(10).size(), 4u);  // epoch 1 starts whole
}

TEST(GlobalSamplerTest, RankSlicesCoverTheBatchOnce) {
  for (uint32_t batch : {1u, 7u, 64u, 128u, 129u}) {
    for (uint32_t ranks : {1u, 2u, 3u, 4u, 7u}) {
      uint32_t expected_begin = 0;
      for (uint32_t r = 0; r < ranks; ++r) {
        const auto [begin, end] = GlobalSampler::RankSlice(batch, r, ranks);
        EXPECT_EQ(begin, expected_begin) << "batch " << batch << " ranks " << ranks;
        EXPECT_LE(end - begin, batch / ranks + 1);
        EXPECT_GE(end - begin, batch / ranks);
        expected_begin = end;
      }
      EXPECT_EQ(expected_begin, batch);
    }
  }
}

// An epoch read step by step, with the layout changing from step to step,
// still reads every sample exactly once.
TEST(GlobalSamplerTest, ExactlyOnceAcrossLayoutChanges) {
  const uint32_t n = 1003;
  GlobalSampler sampler(n, 50, 11);
  std::vector<int> seen(n, 0);
  uint64_t cursor = 0;
  uint32_t step = 0;
  while (cursor < n) {
    const std::vector<uint32_t> batch = sampler.GlobalBatch(cursor);
    const uint32_t ranks = 1 + step % 5;
    for (uint32_t r = 0; r < ranks; ++r) {
      const auto [begin, end] = GlobalSampler::RankSlice(batch.size(), r, ranks);
      for (uint32_t i = begin; i < end; ++i) ++seen[batch[i]];
    }
    cursor += batch.size();
    ++step;
  }
  EXPECT_EQ(cursor, n);
  EXPECT_EQ(step, sampler.StepsPerEpoch());
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
}

}  // namespace
}  // namespace tandem
