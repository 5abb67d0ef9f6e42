// Test support: checks the sample logs that workers write in test mode
// (`tandem worker --sample-log DIR`, passed on by `tandem agent` and `tandem
// up`) for exactly-once use of the training data.
#ifndef TANDEM_TESTS_SUPPORT_SAMPLE_LOG_H_
#define TANDEM_TESTS_SUPPORT_SAMPLE_LOG_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace tandem::testing {

// Every step 0..steps-1 consumed exactly the samples of its global batch of
// Fashion-MNIST's training set (batch `batch`, data order seeded by `seed`),
// and no sample twice. Ranks log the slice they computed; a step's update is
// made of the slices of its last generation (an attempt a loss interrupted is
// redone by the survivors under a newer generation, its gradients discarded).
::testing::AssertionResult EverySampleOnce(const std::string& dir, uint64_t steps, uint32_t batch,
                                           uint64_t seed);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_SAMPLE_LOG_H_
