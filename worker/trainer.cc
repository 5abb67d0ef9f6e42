#include "worker/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/async_saver.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "checkpoint/torch_file.h"
#include "worker/fashion_mnist.h"
#include "worker/job_spec.h"
#include "worker/models.h"
#include "worker/optimizer.h"
#include "worker/sampler.h"
#include "worker/worker_events.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr char kTorchRngName[] = "torch.cpu";
constexpr int64_t kEvalBatch = 1000;
constexpr double kProgressEverySeconds = 0.5;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Rank 0's view of an operation only it performs (store access), shared so
// that every rank of the pool stops together on an error.
absl::Status ShareStatus(PoolComm& comm, const absl::Status& on_root) {
  int32_t header[2] = {static_cast<int32_t>(on_root.code()),
                       static_cast<int32_t>(on_root.message().size())};
  absl::Status status = comm.Broadcast(header, sizeof(header), 0);
  if (!status.ok()) return status;
  if (header[0] == 0) return absl::OkStatus();
  std::string message(on_root.message());
  message.resize(header[1]);
  status = comm.Broadcast(message.data(), message.size(), 0);
  if (!status.ok()) return status;
  return absl::Status(static_cast<absl::StatusCode>(header[0]), message);
}

// The model's parameters and gradients, each living in one flat fp32 tensor,
// so that the allreduce and the optimizer see a single contiguous buffer.
struct FlatModel {
  struct Slot {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset;
    int64_t numel;
  };

  std::unique_ptr<Network> network;
  std::vector<Slot> slots;
  int64_t numel = 0;
  at::Tensor params;
  // numel + 1 floats: the last one carries this rank's loss sum through the
  // same allreduce as the gradient, saving a collective per step.
  at::Tensor grad_and_loss;

  at::Tensor grad() { return grad_and_loss.narrow(0, 0, numel); }
  float& loss_slot() { return grad_and_loss.data_ptr<float>()[numel]; }
};

absl::StatusOr<FlatModel> BuildFlatModel(v1::ModelArch arch) {
  FlatModel model;
  model.network = MakeNetwork(arch);
  if (model.network == nullptr) return absl::InvalidArgumentError("model.arch: unsupported");
  NamedTensors parameters = model.network->Parameters();
  for (auto& [name, p] : parameters) {
    model.slots.push_back({name, p.sizes().vec(), model.numel, p.numel()});
    model.numel += p.numel();
  }
  model.params = torch::empty({model.numel}, torch::kFloat);
  model.grad_and_loss = torch::zeros({model.numel + 1}, torch::kFloat);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters.size(); ++i) {
    const FlatModel::Slot& slot = model.slots[i];
    at::Tensor& p = parameters[i].second;
    at::Tensor param_view = model.params.narrow(0, slot.offset, slot.numel).view(slot.shape);
    param_view.copy_(p);
    p.set_data(param_view);
    p.mutable_grad() = model.grad_and_loss.narrow(0, slot.offset, slot.numel).view(slot.shape);
  }
  return model;
}

// Every tensor of the training state, as the checkpoint names them:
// "model.NAME", "optim.STATE.NAME" for per-parameter optimizer state and
// "optim.STATE" for scalars. All are views of the live flat buffers.
std::vector<std::pair<std::string, at::Tensor>> StateTensors(FlatModel& model,
                                                             Optimizer& optimizer) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const FlatModel::Slot& slot : model.slots) {
    out.emplace_back("model." + slot.name,
                     model.params.narrow(0, slot.offset, slot.numel).view(slot.shape));
  }
  for (auto& [state_name, flat] : optimizer.State()) {
    if (flat.numel() != model.numel) {
      out.emplace_back("optim." + state_name, flat);
      continue;
    }
    for (const FlatModel::Slot& slot : model.slots) {
      out.emplace_back("optim." + state_name + "." + slot.name,
                       flat.narrow(0, slot.offset, slot.numel).view(slot.shape));
    }
  }
  return out;
}

v1::DType ToDType(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return v1::DTYPE_FLOAT32;
    case at::kDouble:
      return v1::DTYPE_FLOAT64;
    case at::kLong:
      return v1::DTYPE_INT64;
    case at::kByte:
      return v1::DTYPE_UINT8;
    default:
      return v1::DTYPE_UNSPECIFIED;
  }
}

std::vector<TensorView> Views(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<TensorView> views;
  views.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    views.push_back({name, ToDType(t), t.sizes().vec(), t.data_ptr(), t.nbytes()});
  }
  return views;
}

// Copies a checkpoint's tensors into the live state, checking that every
// tensor is there with the right type and shape.
absl::Status RestoreTensors(const Checkpoint& checkpoint,
                            const std::vector<std::pair<std::string, at::Tensor>>& targets) {
  std::map<std::string, const StoredTensor*> by_name;
  for (const StoredTensor& t : checkpoint.tensors) by_name[t.name] = &t;
  const std::string where = absl::StrFormat("checkpoint of job %s at step %d",
                                            checkpoint.manifest.job(), checkpoint.manifest.step());
  for (const auto& [name, target] : targets) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s has no tensor %s: was it written for another model or optimizer?", where, name));
    }
    const StoredTensor& stored = *it->second;
    if (stored.dtype != ToDType(target) || stored.shape != target.sizes().vec() ||
        stored.bytes.size() != target.nbytes()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: tensor %s has another type or shape than this job's model", where, name));
    }
    std::memcpy(target.data_ptr(), stored.bytes.data(), stored.bytes.size());
  }
  return absl::OkStatus();
}

class Trainer {
 public:
  Trainer(const WorkerOptions& options, PoolComm& comm, std::ostream& events)
      : options_(options), comm_(comm), events_(events) {}

  absl::Status Run();

 private:
  void Emit(Json event) {
    if (comm_.rank() != 0) return;
    events_ << kEventPrefix << event.dump() << "\n" << std::flush;
  }

  at::Tensor Images(const MnistSplit& split, const uint32_t* indices, int64_t n) const;
  absl::Status OpenStoreAndResume();
  // Loads the model parameters from a PyTorch state_dict file (--init).
  absl::Status LoadInitFile();
  absl::Status BroadcastState();
  // Rank 0: hands the state of this step to the store, on the saver's
  // thread when checkpoint.async is set. Failures become warnings.
  void SaveCheckpoint();
  // Rank 0: reports saves that finished (after waiting for all, if `wait`).
  void ReportSaves(bool wait);
  void ReportSave(const AsyncSaver::Finished& finished);
  absl::StatusOr<std::pair<double, double>> Evaluate();
  absl::Status CheckReplicasAgree(const std::string& digest);

  const WorkerOptions& options_;
  PoolComm& comm_;
  std::ostream& events_;

  v1::JobSpec spec_;
  MnistSplit train_;
  MnistSplit test_;
  std::optional<GlobalSampler> sampler_;
  FlatModel model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<CheckpointStore> store_;  // rank 0 only
  std::unique_ptr<AsyncSaver> saver_;       // rank 0 only; destroyed before store_
  std::map<uint64_t, double> stall_ms_;     // training time each checkpoint cost
  uint64_t step_ = 0;
  uint64_t cursor_ = 0;
  uint64_t last_saved_step_ = UINT64_MAX;
  bool resumed_ = false;
  std::string init_digest_;  // of the --init parameters, named as in the file
};

at::Tensor Trainer::Images(const MnistSplit& split, const uint32_t* indices, int64_t n) const {
  const int64_t pixels = int64_t{split.rows} * split.cols;
  at::Tensor raw = torch::empty({n, 1, split.rows, split.cols}, torch::kUInt8);
  uint8_t* out = raw.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * pixels, split.images.data() + int64_t{indices[i]} * pixels, pixels);
  }
  return raw.to(torch::kFloat).div_(255.0).sub_(kFashionMnistMean).div_(kFashionMnistStd);
}

absl::Status Trainer::OpenStoreAndResume() {
  absl::Status status;
  std::optional<Checkpoint> checkpoint;
  if (comm_.rank() == 0) {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
        CheckpointStore::Open(options_.store_dir);
    if (!store.ok()) {
      status = store.status();
    } else {
      store_ = std::move(*store);
      if (spec_.checkpoint().async()) saver_ = std::make_unique<AsyncSaver>(store_.get());
      absl::StatusOr<uint64_t> latest = store_->LatestStep(spec_.name());
      if (latest.ok() && !options_.resume) {
        status = absl::AlreadyExistsError(absl::StrFormat(
            "store %s already has checkpoints of job %s (latest at step %d); pass --resume to "
            "continue from it, or use another --store",
            options_.store_dir, spec_.name(), *latest));
      } else if (latest.ok()) {
        std::vector<std::string> warnings;
        absl::StatusOr<Checkpoint> loaded = store_->LoadLatestValid(spec_.name(), &warnings);
        for (const std::string& warning : warnings) {
          Emit({{"event", "warning"}, {"message", warning}});
        }
        if (!loaded.ok()) {
          status = loaded.status();
        } else {
          checkpoint = std::move(*loaded);
        }
      } else if (!absl::IsNotFound(latest.status())) {
        status = latest.status();
      } else if (options_.resume) {
        Emit({{"event", "warning"},
              {"message", absl::StrFormat("no checkpoint of job %s in %s: starting from step 0",
                                          spec_.name(), options_.store_dir)}});
      }
    }
    if (status.ok() && checkpoint.has_value()) {
      const v1::JobSpec& saved = checkpoint->manifest.spec();
      if (saved.model().arch() != spec_.model().arch() ||
          saved.train().optimizer() != spec_.train().optimizer()) {
        status = absl::FailedPreconditionError(absl::StrFormat(
            "the latest checkpoint of job %s was trained with model.arch %s and optimizer %s; "
            "this spec asks for %s and %s",
            spec_.name(), ModelArchName(saved.model().arch()),
            OptimizerName(saved.train().optimizer()), ModelArchName(spec_.model().arch()),
            OptimizerName(spec_.train().optimizer())));
      }
    }
    if (status.ok() && checkpoint.has_value()) {
      status = RestoreTensors(*checkpoint, StateTensors(model_, *optimizer_));
      for (const v1::RngState& rng : checkpoint->manifest.rng()) {
        if (rng.name() != kTorchRngName || !status.ok()) continue;
        at::Tensor state = torch::empty({static_cast<int64_t>(rng.state().size())}, torch::kUInt8);
        std::memcpy(state.data_ptr(), rng.state().data(), rng.state().size());
        at::Generator generator = at::detail::getDefaultCPUGenerator();
        generator.set_state(state);
      }
      step_ = checkpoint->manifest.step();
      cursor_ = checkpoint->manifest.global_cursor();
      last_saved_step_ = step_;
    }
  }
  status = ShareStatus(comm_, status);
  if (!status.ok()) return status;
  int32_t resumed = checkpoint.has_value() ? 1 : 0;
  status = comm_.Broadcast(&resumed, sizeof(resumed), 0);
  if (!status.ok()) return status;
  resumed_ = resumed != 0;
  if (!resumed_) return absl::OkStatus();
  return BroadcastState();
}

absl::Status Trainer::LoadInitFile() {
  // Every rank reads the file: it is local, small next to the dataset, and
  // this needs no collective.
  absl::StatusOr<std::vector<StoredTensor>> file = ReadStateDict(options_.init_file);
  if (!file.ok()) return file.status();
  std::map<std::string, const StoredTensor*> by_name;
  for (const StoredTensor& t : *file) by_name[t.name] = &t;
  std::vector<TensorView> loaded;
  for (const FlatModel::Slot& slot : model_.slots) {
    auto it = by_name.find(slot.name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s has no tensor %s, which the %s model needs", options_.init_file,
                          slot.name, ModelArchName(spec_.model().arch())));
    }
    const StoredTensor& t = *it->second;
    if (t.dtype != v1::DTYPE_FLOAT32 || t.shape != slot.shape) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %s is %s [%s], the %s model's is float32 [%s]", options_.init_file, slot.name,
          t.dtype == v1::DTYPE_FLOAT32 ? "float32" : "not float32", absl::StrJoin(t.shape, ", "),
          ModelArchName(spec_.model().arch()), absl::StrJoin(slot.shape, ", ")));
    }
    std::memcpy(model_.params.data_ptr<float>() + slot.offset, t.bytes.data(), t.bytes.size());
    loaded.push_back({slot.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s has tensors the %s model does not: %s", options_.init_file,
        ModelArchName(spec_.model().arch()),
        absl::StrJoin(by_name, ", ",
                      [](std::string* out, const auto& entry) { out->append(entry.first); })));
  }
  init_digest_ = StateDigest(loaded);
  return absl::OkStatus();
}

absl::Status Trainer::BroadcastState() {
  uint64_t position[2] = {step_, cursor_};
  absl::Status status = comm_.Broadcast(position, sizeof(position), 0);
  if (!status.ok()) return status;
  step_ = position[0];
  cursor_ = position[1];
  last_saved_step_ = step_;
  for (auto& [name, tensor] : StateTensors(model_, *optimizer_)) {
    status = comm_.Broadcast(tensor.data_ptr(), tensor.nbytes(), 0);
    if (!status.ok()) return status;
  }
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  status = comm_.Broadcast(rng.data_ptr(), rng.nbytes(), 0);
  if (!status.ok()) return status;
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);
  return absl::OkStatus();
}

void Trainer::SaveCheckpoint() {
  if (comm_.rank() != 0 || last_saved_step_ == step_) return;
  const Clock::time_point start = Clock::now();
  v1::CheckpointManifest manifest;
  manifest.set_job(spec_.name());
  manifest.set_step(step_);
  manifest.set_global_cursor(cursor_);
  manifest.set_epoch(sampler_->EpochAt(cursor_));
  *manifest.mutable_spec() = spec_;
  for (const v1::PoolSpec& pool : spec_.pools()) {
    v1::Layout::Pool* p = manifest.mutable_layout()->add_pools();
    p->set_cloud(pool.cloud());
    p->set_ranks(pool.workers());
  }
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  v1::RngState* rng_state = manifest.add_rng();
  rng_state->set_name(kTorchRngName);
  rng_state->set_state(std::string(static_cast<const char*>(rng.data_ptr()), rng.nbytes()));
  last_saved_step_ = step_;
  if (saver_ != nullptr) {
    saver_->Submit(std::move(manifest), Views(StateTensors(model_, *optimizer_)),
                   spec_.checkpoint().keep());
    stall_ms_[step_] = SecondsSince(start) * 1000;
    return;
  }
  absl::StatusOr<v1::CheckpointManifest> saved = store_->Save(
      std::move(manifest), Views(StateTensors(model_, *optimizer_)), spec_.checkpoint().keep());
  stall_ms_[step_] = SecondsSince(start) * 1000;
  ReportSave({step_, std::move(saved), SecondsSince(start)});
}

void Trainer::ReportSaves(bool wait) {
  if (saver_ == nullptr) return;
  if (wait) saver_->Wait();
  for (AsyncSaver::Finished& finished : saver_->TakeFinished()) ReportSave(finished);
}

void Trainer::ReportSave(const AsyncSaver::Finished& finished) {
  const double stall_ms = stall_ms_[finished.step];
  stall_ms_.erase(finished.step);
  if (!finished.manifest.ok()) {
    // The store commits atomically, so the previous checkpoint is intact:
    // losing one save must not end the run.
    Emit({{"event", "warning"},
          {"message", absl::StrFormat("checkpoint at step %d failed: %s", finished.step,
                                      finished.manifest.status().ToString())}});
    return;
  }
  Emit({{"event", "checkpoint"},
        {"step", finished.step},
        {"state_digest", finished.manifest->state_digest()},
        {"bytes", finished.manifest->total_bytes()},
        {"save_ms", finished.save_seconds * 1000},
        {"stall_ms", stall_ms}});
}

absl::StatusOr<std::pair<double, double>> Trainer::Evaluate() {
  torch::NoGradGuard no_grad;
  const auto [begin, end] = GlobalSampler::RankSlice(test_.count, comm_.rank(), comm_.size());
  std::vector<uint32_t> indices(test_.count);
  for (uint32_t i = 0; i < test_.count; ++i) indices[i] = i;
  double sums[2] = {0, 0};  // loss, correct
  for (uint32_t first = begin; first < end; first += kEvalBatch) {
    const int64_t n = std::min<int64_t>(kEvalBatch, end - first);
    at::Tensor logits = model_.network->Forward(Images(test_, indices.data() + first, n));
    at::Tensor labels =
        torch::from_blob(const_cast<uint8_t*>(test_.labels.data()) + first, {n}, torch::kUInt8)
            .to(torch::kLong);
    sums[0] +=
        torch::nn::functional::cross_entropy(
            logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
            .item<double>();
    sums[1] += logits.argmax(1).eq(labels).sum().item<double>();
  }
  absl::Status status = comm_.AllreduceSum(sums, 2);
  if (!status.ok()) return status;
  return std::make_pair(sums[1] / test_.count, sums[0] / test_.count);
}

absl::Status Trainer::CheckReplicasAgree(const std::string& digest) {
  std::vector<char> all(digest.size() * comm_.size());
  absl::Status status = comm_.AllGather(digest.data(), digest.size(), all.data());
  if (!status.ok()) return status;
  for (int r = 0; r < comm_.size(); ++r) {
    if (std::memcmp(all.data() + r * digest.size(), digest.data(), digest.size()) != 0) {
      return absl::InternalError(absl::StrFormat(
          "rank %d's parameters differ from rank %d's after step %d: the replicas diverged", r,
          comm_.rank(), step_));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::Run() {
  const Clock::time_point run_start = Clock::now();
  torch::set_num_threads(1);
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(options_.spec_path);
  if (!spec.ok()) return spec.status();
  spec_ = std::move(*spec);
  if (options_.max_steps != 0) spec_.mutable_train()->set_max_steps(options_.max_steps);
  const v1::TrainSpec& train = spec_.train();
  if (TotalWorkers(spec_) != static_cast<uint32_t>(comm_.size())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the spec's pools have %d workers but mpirun started %d ranks",
                        TotalWorkers(spec_), comm_.size()));
  }

  absl::StatusOr<MnistSplit> train_split = LoadFashionMnist(spec_.data().path(), Split::kTrain);
  if (!train_split.ok()) return train_split.status();
  train_ = std::move(*train_split);
  absl::StatusOr<MnistSplit> test_split = LoadFashionMnist(spec_.data().path(), Split::kTest);
  if (!test_split.ok()) return test_split.status();
  test_ = std::move(*test_split);
  sampler_.emplace(train_.count, train.global_batch(), train.seed());

  torch::manual_seed(train.seed());
  absl::StatusOr<FlatModel> model = BuildFlatModel(spec_.model().arch());
  if (!model.ok()) return model.status();
  model_ = std::move(*model);
  optimizer_ = MakeOptimizer(train, model_.numel);
  if (!options_.init_file.empty()) {
    absl::Status init = LoadInitFile();
    if (!init.ok()) return init;
  }

  absl::Status status = OpenStoreAndResume();
  if (!status.ok()) return status;

  const uint64_t total_steps = sampler_->TotalSteps(train.epochs(), train.max_steps());
  Emit({{"event", "start"},
        {"total_steps", total_steps},
        {"start_step", step_},
        {"ranks", comm_.size()},
        {"parameters", model_.numel},
        {"resumed", resumed_},
        {"init_digest", init_digest_}});

  double last_loss = 0;
  double train_seconds = 0;
  uint64_t trained_samples = 0;
  Clock::time_point window_start = Clock::now();
  uint64_t window_samples = 0;
  double test_accuracy = -1;
  double test_loss = -1;
  std::vector<at::Tensor> grads_before;
  for (const auto& [name, p] : model_.network->Parameters()) grads_before.push_back(p.grad());

  while (step_ < total_steps) {
    const Clock::time_point step_start = Clock::now();
    const std::vector<uint32_t> batch = sampler_->GlobalBatch(cursor_);
    const uint32_t batch_size = static_cast<uint32_t>(batch.size());
    const auto [begin, end] = GlobalSampler::RankSlice(batch_size, comm_.rank(), comm_.size());
    const int64_t n = end - begin;

    model_.grad_and_loss.zero_();
    if (n > 0) {
      at::Tensor images = Images(train_, batch.data() + begin, n);
      at::Tensor labels = torch::empty({n}, torch::kLong);
      for (int64_t i = 0; i < n; ++i) {
        labels.data_ptr<int64_t>()[i] = train_.labels[batch[begin + i]];
      }
      at::Tensor loss_sum = torch::nn::functional::cross_entropy(
          model_.network->Forward(images), labels,
          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
      // Dividing by the global batch (not this rank's share) makes the summed
      // gradient the mean over the global batch, whatever the layout.
      (loss_sum / static_cast<double>(batch_size)).backward();
      model_.loss_slot() = loss_sum.item<float>();
    }
    status = comm_.AllreduceSum(model_.grad_and_loss.data_ptr<float>(), model_.numel + 1);
    if (!status.ok()) return status;
    last_loss = model_.loss_slot() / batch_size;
    {
      torch::NoGradGuard no_grad;
      at::Tensor grad = model_.grad();
      optimizer_->Step(model_.params, grad);
    }
    ++step_;
    cursor_ += batch_size;
    trained_samples += batch_size;
    window_samples += batch_size;
    train_seconds += SecondsSince(step_start);

    if (step_ == 1 || step_ == total_steps || SecondsSince(window_start) >= kProgressEverySeconds) {
      Emit({{"event", "progress"},
            {"step", step_},
            {"total_steps", total_steps},
            {"epoch", sampler_->EpochAt(cursor_)},
            {"cursor", cursor_},
            {"loss", last_loss},
            {"samples_per_s", window_samples / std::max(1e-9, SecondsSince(window_start))}});
      window_start = Clock::now();
      window_samples = 0;
    }
    if (train.eval_every_steps() != 0 && step_ % train.eval_every_steps() == 0 &&
        step_ != total_steps) {
      absl::StatusOr<std::pair<double, double>> eval = Evaluate();
      if (!eval.ok()) return eval.status();
      Emit({{"event", "eval"},
            {"step", step_},
            {"test_accuracy", eval->first},
            {"test_loss", eval->second}});
    }
    if (spec_.checkpoint().every_steps() != 0 && step_ % spec_.checkpoint().every_steps() == 0) {
      SaveCheckpoint();
    }
    if (comm_.rank() == 0) ReportSaves(/*wait=*/false);
  }
  // Backward must have accumulated into our flat buffer, not into fresh
  // tensors; otherwise the allreduce would have summed zeros.
  std::vector<at::Tensor> grads_after;
  for (const auto& [name, p] : model_.network->Parameters()) grads_after.push_back(p.grad());
  for (size_t i = 0; i < grads_after.size(); ++i) {
    if (grads_after[i].data_ptr() != grads_before[i].data_ptr()) {
      return absl::InternalError("autograd replaced a flat gradient view; gradients were lost");
    }
  }

  absl::StatusOr<std::pair<double, double>> eval = Evaluate();
  if (!eval.ok()) return eval.status();
  test_accuracy = eval->first;
  test_loss = eval->second;
  Emit({{"event", "eval"},
        {"step", step_},
        {"test_accuracy", test_accuracy},
        {"test_loss", test_loss}});

  SaveCheckpoint();
  if (comm_.rank() == 0) ReportSaves(/*wait=*/true);
  const std::string digest = StateDigest(Views(StateTensors(model_, *optimizer_)));
  status = CheckReplicasAgree(digest);
  if (!status.ok()) return status;

  Emit({{"event", "done"},
        {"steps", step_},
        {"epochs", static_cast<double>(cursor_) / train_.count},
        {"cursor", cursor_},
        {"loss", last_loss},
        {"test_accuracy", test_accuracy},
        {"test_loss", test_loss},
        {"samples_per_s", trained_samples / std::max(1e-9, train_seconds)},
        {"worker_wall_s", SecondsSince(run_start)},
        {"state_digest", digest}});
  return absl::OkStatus();
}

}  // namespace

absl::Status RunWorker(const WorkerOptions& options, PoolComm& comm, std::ostream& events) {
  Trainer trainer(options, comm, events);
  try {
    return trainer.Run();
  } catch (const std::exception& e) {
    // Torch reports its errors by exception; they stop here.
    return absl::InternalError(absl::StrCat("libtorch: ", e.what()));
  }
}

}  // namespace tandem
