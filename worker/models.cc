#include "worker/models.h"

#include <torch/torch.h>

namespace tandem {
namespace {

struct MlpImpl : torch::nn::Module {
  MlpImpl()
      : fc1(register_module("fc1", torch::nn::Linear(28 * 28, 256))),
        fc2(register_module("fc2", torch::nn::Linear(256, 128))),
        fc3(register_module("fc3", torch::nn::Linear(128, 10))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = torch::relu(fc1->forward(x.flatten(1)));
    h = torch::relu(fc2->forward(h));
    return fc3->forward(h);
  }

  torch::nn::Linear fc1, fc2, fc3;
};

struct CnnImpl : torch::nn::Module {
  CnnImpl()
      : conv1(register_module("conv1",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1)))),
        conv2(register_module("conv2",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)))),
        fc1(register_module("fc1", torch::nn::Linear(64 * 7 * 7, 128))),
        fc2(register_module("fc2", torch::nn::Linear(128, 10))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    h = torch::max_pool2d(torch::relu(conv2->forward(h)), 2);
    h = torch::relu(fc1->forward(h.flatten(1)));
    return fc2->forward(h);
  }

  torch::nn::Conv2d conv1, conv2;
  torch::nn::Linear fc1, fc2;
};

template <typename Module>
class TorchNetwork : public Network {
 public:
  at::Tensor Forward(const at::Tensor& images) override { return module_.forward(images); }

  NamedTensors Parameters() override {
    NamedTensors out;
    for (const auto& item : module_.named_parameters(/*recurse=*/true)) {
      out.emplace_back(item.key(), item.value());
    }
    return out;
  }

 private:
  Module module_;
};

}  // namespace

std::unique_ptr<Network> MakeNetwork(v1::ModelArch arch) {
  switch (arch) {
    case v1::MODEL_ARCH_MLP:
      return std::make_unique<TorchNetwork<MlpImpl>>();
    case v1::MODEL_ARCH_CNN:
      return std::make_unique<TorchNetwork<CnnImpl>>();
    default:
      return nullptr;
  }
}

}  // namespace tandem
