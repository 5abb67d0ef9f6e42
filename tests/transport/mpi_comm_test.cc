// Runs under mpirun with several ranks (see CMakeLists.txt): every rank runs
// every test, so each test is a collective.
#include "transport/mpi_comm.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace tandem {
namespace {

std::unique_ptr<MpiSession> session;

TEST(PoolCommTest, AllreduceSumSpansSeveralBuckets) {
  PoolComm comm = PoolComm::World();
  ASSERT_GE(comm.size(), 2) << "run this test under mpirun with at least 2 ranks";
  const size_t n = PoolComm::kBucketFloats + 1000;
  std::vector<float> data(n);
  for (size_t i = 0; i < n; ++i) data[i] = static_cast<float>((i % 97) + comm.rank());
  ASSERT_TRUE(comm.AllreduceSum(data.data(), n).ok());
  const int ranks = comm.size();
  const float rank_sum = static_cast<float>(ranks * (ranks - 1) / 2);
  for (size_t i :
       {size_t{0}, size_t{96}, PoolComm::kBucketFloats - 1, PoolComm::kBucketFloats, n - 1}) {
    EXPECT_EQ(data[i], static_cast<float>(ranks * (i % 97)) + rank_sum) << "index " << i;
  }
}

TEST(PoolCommTest, AllreduceSumOfDoubles) {
  PoolComm comm = PoolComm::World();
  double values[2] = {1.5, static_cast<double>(comm.rank())};
  ASSERT_TRUE(comm.AllreduceSum(values, 2).ok());
  EXPECT_EQ(values[0], 1.5 * comm.size());
  EXPECT_EQ(values[1], comm.size() * (comm.size() - 1) / 2.0);
}

TEST(PoolCommTest, BroadcastFromRoot) {
  PoolComm comm = PoolComm::World();
  std::vector<int> data(1000, comm.rank());
  if (comm.rank() == 1) std::iota(data.begin(), data.end(), 7);
  ASSERT_TRUE(comm.Broadcast(data.data(), data.size() * sizeof(int), 1).ok());
  EXPECT_EQ(data[0], 7);
  EXPECT_EQ(data[999], 1006);
}

TEST(PoolCommTest, AllGatherOrdersByRank) {
  PoolComm comm = PoolComm::World();
  const int mine = 100 + comm.rank();
  std::vector<int> all(comm.size());
  ASSERT_TRUE(comm.AllGather(&mine, sizeof(mine), all.data()).ok());
  for (int r = 0; r < comm.size(); ++r) EXPECT_EQ(all[r], 100 + r);
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto mpi = tandem::MpiSession::Start(&argc, &argv);
  if (!mpi.ok()) return 1;
  tandem::session = std::move(*mpi);
  const int failed = RUN_ALL_TESTS();
  // Every rank's verdict counts: one rank's failure fails the test.
  tandem::PoolComm comm = tandem::PoolComm::World();
  double failures = failed != 0 ? 1 : 0;
  if (!comm.AllreduceSum(&failures, 1).ok()) return 1;
  tandem::session.reset();
  return failures > 0 ? 1 : 0;
}
