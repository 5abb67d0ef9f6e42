// The networks tandem trains. Torch stays out of this header (only the Tensor
// type is named) so that files using a model compile in seconds, not fifteen.
#ifndef TANDEM_WORKER_MODELS_H_
#define TANDEM_WORKER_MODELS_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tandem/v1/job.pb.h"

namespace tandem {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

class Network {
 public:
  virtual ~Network() = default;
  // images: float [N, 1, 28, 28], normalised. Returns logits [N, 10].
  virtual at::Tensor Forward(const at::Tensor& images) = 0;
  // Trainable parameters by name ("conv1.weight", ...), always in the same order.
  virtual NamedTensors Parameters() = 0;
};

// Builds `arch` with weights drawn from torch's default CPU generator: seed it
// first (torch::manual_seed) for a reproducible start.
//   mlp: 784 -> 256 -> 128 -> 10, ReLU.
//   cnn: conv 3x3 32 -> pool -> conv 3x3 64 -> pool -> fc 128 -> fc 10 (421,642 parameters).
std::unique_ptr<Network> MakeNetwork(v1::ModelArch arch);

}  // namespace tandem

#endif  // TANDEM_WORKER_MODELS_H_
