#include "worker/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>

namespace tandem {
namespace {

class Sgd : public Optimizer {
 public:
  Sgd(const v1::TrainSpec& train, int64_t n)
      : lr_(train.lr()),
        momentum_(train.momentum()),
        weight_decay_(train.weight_decay()),
        buffer_(at::zeros({n}, at::kFloat)) {}

  void SetLr(double lr) override { lr_ = lr; }

  void Step(at::Tensor& params, const at::Tensor& grad) override {
    at::Tensor g = grad;
    if (weight_decay_ != 0) g = grad.add(params, weight_decay_);
    if (momentum_ != 0) {
      // A zero buffer makes the first step buf = g, as PyTorch's lazy init does.
      buffer_.mul_(momentum_).add_(g);
      g = buffer_;
    }
    params.add_(g, -lr_);
  }

  std::vector<std::pair<std::string, at::Tensor>> State() override {
    return {{"momentum", buffer_}};
  }

 private:
  double lr_;
  double momentum_;
  double weight_decay_;
  at::Tensor buffer_;
};

class Adam : public Optimizer {
 public:
  Adam(const v1::TrainSpec& train, int64_t n)
      : lr_(train.lr()),
        beta1_(train.adam_beta1()),
        beta2_(train.adam_beta2()),
        eps_(train.adam_eps()),
        weight_decay_(train.weight_decay()),
        exp_avg_(at::zeros({n}, at::kFloat)),
        exp_avg_sq_(at::zeros({n}, at::kFloat)),
        step_(at::zeros({1}, at::kLong)) {}

  void SetLr(double lr) override { lr_ = lr; }

  void Step(at::Tensor& params, const at::Tensor& grad) override {
    at::Tensor g = grad;
    if (weight_decay_ != 0) g = grad.add(params, weight_decay_);
    const int64_t step = step_.data_ptr<int64_t>()[0] + 1;
    step_.data_ptr<int64_t>()[0] = step;
    exp_avg_.mul_(beta1_).add_(g, 1 - beta1_);
    exp_avg_sq_.mul_(beta2_).addcmul_(g, g, 1 - beta2_);
    const double bias_correction1 = 1 - std::pow(beta1_, static_cast<double>(step));
    const double bias_correction2 = 1 - std::pow(beta2_, static_cast<double>(step));
    at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bias_correction2)).add_(eps_);
    params.addcdiv_(exp_avg_, denom, -lr_ / bias_correction1);
  }

  std::vector<std::pair<std::string, at::Tensor>> State() override {
    return {{"exp_avg", exp_avg_}, {"exp_avg_sq", exp_avg_sq_}, {"step", step_}};
  }

 private:
  double lr_;
  double beta1_;
  double beta2_;
  double eps_;
  double weight_decay_;
  at::Tensor exp_avg_;
  at::Tensor exp_avg_sq_;
  at::Tensor step_;
};

}  // namespace

double ScheduledLr(const v1::TrainSpec& train, uint64_t step, uint64_t total_steps) {
  if (train.lr_schedule() != v1::LR_SCHEDULE_COSINE || total_steps == 0) return train.lr();
  const double progress = static_cast<double>(step) / static_cast<double>(total_steps);
  return train.lr() * 0.5 * (1 + std::cos(M_PI * progress));
}

std::unique_ptr<Optimizer> MakeOptimizer(const v1::TrainSpec& train, int64_t num_params) {
  if (train.optimizer() == v1::OPTIMIZER_KIND_ADAM) {
    return std::make_unique<Adam>(train, num_params);
  }
  return std::make_unique<Sgd>(train, num_params);
}

}  // namespace tandem
