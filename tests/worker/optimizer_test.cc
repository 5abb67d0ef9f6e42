// Our flat optimizers against libtorch's own torch::optim on the same
// parameters and gradients: they must follow PyTorch's update rules.
#include "worker/optimizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace tandem {
namespace {

v1::TrainSpec Spec(v1::OptimizerKind kind, double weight_decay) {
  v1::TrainSpec train;
  train.set_optimizer(kind);
  train.set_lr(kind == v1::OPTIMIZER_KIND_ADAM ? 1e-3 : 0.05);
  train.set_momentum(0.9);
  train.set_adam_beta1(0.9);
  train.set_adam_beta2(0.999);
  train.set_adam_eps(1e-8);
  train.set_weight_decay(weight_decay);
  return train;
}

// Runs 6 steps of ours and of torch's on 1000 parameters; returns the largest
// difference in the parameters.
double MaxDifference(const v1::TrainSpec& train) {
  torch::manual_seed(5);
  at::Tensor ours = torch::randn({1000});
  torch::Tensor theirs = ours.clone().requires_grad_(true);
  std::unique_ptr<Optimizer> optimizer = MakeOptimizer(train, ours.numel());
  std::unique_ptr<torch::optim::Optimizer> reference;
  if (train.optimizer() == v1::OPTIMIZER_KIND_ADAM) {
    reference = std::make_unique<torch::optim::Adam>(std::vector<torch::Tensor>{theirs},
                                                     torch::optim::AdamOptions(train.lr())
                                                         .eps(train.adam_eps())
                                                         .weight_decay(train.weight_decay()));
  } else {
    reference = std::make_unique<torch::optim::SGD>(std::vector<torch::Tensor>{theirs},
                                                    torch::optim::SGDOptions(train.lr())
                                                        .momentum(train.momentum())
                                                        .weight_decay(train.weight_decay()));
  }
  for (int step = 0; step < 6; ++step) {
    at::Tensor grad = torch::randn({1000});
    // Under a schedule both change their learning rate before each step.
    const double lr = ScheduledLr(train, step, 6);
    optimizer->SetLr(lr);
    reference->param_groups()[0].options().set_lr(lr);
    optimizer->Step(ours, grad);
    theirs.mutable_grad() = grad.clone();
    reference->step();
  }
  return (ours - theirs.detach()).abs().max().item<double>();
}

TEST(OptimizerTest, SgdWithMomentumMatchesTorch) {
  EXPECT_LT(MaxDifference(Spec(v1::OPTIMIZER_KIND_SGD, 0)), 1e-6);
}

TEST(OptimizerTest, SgdWithWeightDecayMatchesTorch) {
  EXPECT_LT(MaxDifference(Spec(v1::OPTIMIZER_KIND_SGD, 1e-2)), 1e-6);
}

TEST(OptimizerTest, AdamMatchesTorch) {
  EXPECT_LT(MaxDifference(Spec(v1::OPTIMIZER_KIND_ADAM, 0)), 1e-6);
}

TEST(OptimizerTest, AdamWithWeightDecayMatchesTorch) {
  EXPECT_LT(MaxDifference(Spec(v1::OPTIMIZER_KIND_ADAM, 1e-2)), 1e-6);
}

TEST(OptimizerTest, SgdUnderACosineScheduleMatchesTorch) {
  v1::TrainSpec train = Spec(v1::OPTIMIZER_KIND_SGD, 0);
  train.set_lr_schedule(v1::LR_SCHEDULE_COSINE);
  EXPECT_LT(MaxDifference(train), 1e-6);
}

TEST(OptimizerTest, AdamUnderACosineScheduleMatchesTorch) {
  v1::TrainSpec train = Spec(v1::OPTIMIZER_KIND_ADAM, 0);
  train.set_lr_schedule(v1::LR_SCHEDULE_COSINE);
  EXPECT_LT(MaxDifference(train), 1e-6);
}

// PyTorch's CosineAnnealingLR with T_max = the run's steps and eta_min = 0.
TEST(OptimizerTest, ScheduledLrFollowsTheSchedule) {
  v1::TrainSpec train = Spec(v1::OPTIMIZER_KIND_SGD, 0);  // lr 0.05
  EXPECT_DOUBLE_EQ(ScheduledLr(train, 0, 100), 0.05);
  EXPECT_DOUBLE_EQ(ScheduledLr(train, 99, 100), 0.05);  // constant by default
  train.set_lr_schedule(v1::LR_SCHEDULE_CONSTANT);
  EXPECT_DOUBLE_EQ(ScheduledLr(train, 50, 100), 0.05);
  train.set_lr_schedule(v1::LR_SCHEDULE_COSINE);
  EXPECT_DOUBLE_EQ(ScheduledLr(train, 0, 100), 0.05);
  EXPECT_NEAR(ScheduledLr(train, 25, 100), 0.05 * (1 + std::sqrt(0.5)) / 2, 1e-15);
  EXPECT_NEAR(ScheduledLr(train, 50, 100), 0.025, 1e-15);
  EXPECT_NEAR(ScheduledLr(train, 99, 100), 0.05 * (1 - std::cos(M_PI / 100)) / 2, 1e-15);
  EXPECT_GT(ScheduledLr(train, 99, 100), 0);  // the last update still moves
}

TEST(OptimizerTest, StateIsLiveAndRestorable) {
  // Copying a saved state into State() and replaying a step gives the same
  // parameters as the uninterrupted optimizer: what resume relies on.
  v1::TrainSpec train = Spec(v1::OPTIMIZER_KIND_ADAM, 0);
  torch::manual_seed(9);
  at::Tensor params = torch::randn({64});
  at::Tensor g1 = torch::randn({64});
  at::Tensor g2 = torch::randn({64});
  std::unique_ptr<Optimizer> a = MakeOptimizer(train, 64);
  a->Step(params, g1);
  at::Tensor resumed_params = params.clone();
  std::unique_ptr<Optimizer> b = MakeOptimizer(train, 64);
  auto a_state = a->State();
  auto b_state = b->State();
  ASSERT_EQ(a_state.size(), 3u);
  for (size_t i = 0; i < a_state.size(); ++i) {
    ASSERT_EQ(a_state[i].first, b_state[i].first);
    b_state[i].second.copy_(a_state[i].second);
  }
  a->Step(params, g2);
  b->Step(resumed_params, g2);
  EXPECT_TRUE(torch::equal(params, resumed_params));
}

}  // namespace
}  // namespace tandem
