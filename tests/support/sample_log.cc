#include "tests/support/sample_log.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "worker/sampler.h"

namespace tandem::testing {

::testing::AssertionResult EverySampleOnce(const std::string& dir, uint64_t steps, uint32_t batch,
                                           uint64_t seed) {
  constexpr uint64_t kTrainSamples = 60000;  // Fashion-MNIST's training set
  std::map<uint64_t, std::map<uint64_t, std::multiset<uint32_t>>> by_step;  // step -> gen -> ids
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
      uint64_t step = 0;
      uint64_t generation = 0;
      if (fields.size() < 2 || !absl::SimpleAtoi(fields[0], &step) ||
          !absl::SimpleAtoi(fields[1], &generation)) {
        return ::testing::AssertionFailure() << entry.path() << ": malformed line: " << line;
      }
      auto& ids = by_step[step][generation];
      for (size_t i = 2; i < fields.size(); ++i) {
        uint32_t id = 0;
        if (!absl::SimpleAtoi(fields[i], &id)) {
          return ::testing::AssertionFailure() << entry.path() << ": malformed id in: " << line;
        }
        ids.insert(id);
      }
    }
  }
  if (by_step.size() != steps) {
    return ::testing::AssertionFailure()
           << "the logs hold " << by_step.size() << " steps, the job ran " << steps;
  }
  GlobalSampler sampler(kTrainSamples, batch, seed);
  std::set<uint32_t> seen;
  for (uint64_t step = 0; step < steps; ++step) {
    if (by_step.count(step) == 0) return ::testing::AssertionFailure() << "no rank logged step " << step;
    const auto& [generation, ids] = *by_step[step].rbegin();
    const std::vector<uint32_t> expected = sampler.GlobalBatch(step * batch);
    if (ids != std::multiset<uint32_t>(expected.begin(), expected.end())) {
      return ::testing::AssertionFailure()
             << "step " << step << " (generation " << generation << ") used " << ids.size()
             << " samples that are not its global batch of " << expected.size();
    }
    for (uint32_t id : ids) {
      if (!seen.insert(id).second) {
        return ::testing::AssertionFailure() << "sample " << id << " used twice (step " << step
                                             << ")";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace tandem::testing
