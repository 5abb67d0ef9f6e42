// Optimizers over one flat fp32 parameter vector and its flat gradient, with
// PyTorch's update rules (torch.optim.SGD with momentum and dampening 0;
// torch.optim.Adam). Their whole state is a few flat tensors of the same
// length, which is what a checkpoint stores and what a resharded or migrated
// job restores. Not thread-safe.
#ifndef TANDEM_WORKER_OPTIMIZER_H_
#define TANDEM_WORKER_OPTIMIZER_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tandem/v1/job.pb.h"

namespace tandem {

// The learning rate of update `step` (0-based) of a run of `total_steps`
// updates: train.lr, or under lr_schedule cosine
// lr * (1 + cos(pi * step / total_steps)) / 2, from lr down towards 0.
double ScheduledLr(const v1::TrainSpec& train, uint64_t step, uint64_t total_steps);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // The learning rate of the next Steps (train.lr until called).
  virtual void SetLr(double lr) = 0;
  // params -= update(grad); both flat float tensors of the same length.
  virtual void Step(at::Tensor& params, const at::Tensor& grad) = 0;
  // The state by name ("momentum"; "exp_avg", "exp_avg_sq", "step"). The
  // tensors are the live state: copying into them restores a checkpoint.
  virtual std::vector<std::pair<std::string, at::Tensor>> State() = 0;
};

// SGD or Adam as `train` says, for `num_params` parameters.
std::unique_ptr<Optimizer> MakeOptimizer(const v1::TrainSpec& train, int64_t num_params);

}  // namespace tandem

#endif  // TANDEM_WORKER_OPTIMIZER_H_
