#include "worker/trainer.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/async_saver.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "checkpoint/torch_file.h"
#include "tandem/v1/exchange.grpc.pb.h"
#include "transport/codec.h"
#include "transport/grpc_link.h"
#include "transport/tls.h"
#include "worker/fashion_mnist.h"
#include "worker/job_spec.h"
#include "worker/models.h"
#include "worker/optimizer.h"
#include "worker/peer_wait.h"
#include "worker/plan_client.h"
#include "worker/sampler.h"
#include "worker/worker_events.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr char kTorchRngName[] = "torch.cpu";
constexpr int64_t kEvalBatch = 1000;
constexpr double kProgressEverySeconds = 0.5;
// The most pools a job may have (a plan travels to the ranks in a fixed array).
constexpr int kMaxPools = 32;
// An exchange waits in slices this long; between them the leader looks for a
// new plan (a lost peer is often known to the coordinator first, from its
// lease) and judges the peers it waits for (worker/peer_wait.h).
constexpr std::chrono::milliseconds kExchangeSlice{200};
// A wait this long is shown (a "waiting" event, status), and again this often.
constexpr std::chrono::seconds kShowWaitingAfter{2};
constexpr std::chrono::seconds kShowWaitingEvery{5};
// How long a leader waits for the coordinator to decide after reporting an
// unreachable peer, and a joining pool for the pools it must reach.
constexpr std::chrono::minutes kPlanDecisionDeadline{2};
constexpr std::chrono::minutes kJoinDeadline{30};

// What the leader tells its ranks after the exchange point of a step.
enum StepAction : int64_t {
  kProceed = 0,      // apply the step
  kFail = 1,         // the leader failed: a status follows
  kRedo = 2,         // a pool was lost: switch plans, redo the step
  kReplanAfter = 3,  // apply the step, then switch plans (a pool joins)
  kStop = 4,         // apply the step, then stop: the coordinator said so
};

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

// A YAML job spec, or (from an agent) a serialized JobSpec in a ".pb" file.
absl::StatusOr<v1::JobSpec> LoadSpec(const std::string& path) {
  if (path.size() < 3 || path.compare(path.size() - 3, 3, ".pb") != 0) return LoadJobSpec(path);
  std::ifstream in(path, std::ios::binary);
  v1::JobSpec spec;
  if (!in || !spec.ParseFromIstream(&in)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a serialized JobSpec"));
  }
  absl::Status valid = ValidateJobSpec(spec);
  if (!valid.ok()) return valid;
  return spec;
}

class Trainer {
 public:
  Trainer(const WorkerOptions& options, PoolComm& comm, std::ostream& events)
      : options_(options), comm_(comm), events_(events) {}
  // A run that failed with an exchange in flight: it ends once the peers
  // deliver or are given up on (worker/peer_wait.h), before the link and
  // codec it uses go away.
  ~Trainer() {
    if (exchange_thread_.joinable()) exchange_thread_.join();
    // The saver may still be copying members (the codec state) that go first.
    if (saver_ != nullptr) saver_->WaitCopied();
  }

  absl::Status Run();

 private:
  // From the training thread, or a delayed exchange's thread.
  void Emit(Json event) {
    if (comm_.rank() != 0) return;
    std::lock_guard<std::mutex> lock(emit_mu_);
    events_ << kEventPrefix << event.dump() << "\n" << std::flush;
  }

  at::Tensor Images(const MnistSplit& split, const uint32_t* indices, int64_t n) const;
  absl::Status OpenStoreAndResume();
  // Loads the model parameters from a PyTorch state_dict file (--init).
  absl::Status LoadInitFile();
  absl::Status RestoreCodecState(const Checkpoint& checkpoint);
  absl::Status ReconcileAcrossPools(bool* have_state);
  // Leader of a job with several pools: the pool's gradient and loss of step
  // `step` (numel + 1 floats at `grad_and_loss`) become the sum over every
  // pool.
  absl::Status ExchangeGradients(uint64_t step, float* grad_and_loss);
  // Leaders: compare the state digest after `applied` updates.
  absl::Status CheckCloudsAgree(uint64_t round, uint64_t applied);

  // exchange.mode: delayed. Staleness is exactly one update: the gradient of
  // step t is computed on the parameters after the updates of steps
  // 0..t-2 and applied as the update of step t once step t+1's gradient is
  // computed, i.e. on top of step t-1's update, which it did not see. Where
  // the pipeline was drained (a checkpoint, the start of a run, a resume)
  // the next step's gradient is fresh again. Every rank of every cloud
  // applies the same combined gradients in the same order, so the
  // parameters stay bitwise identical across clouds; only the leader's
  // exchange runs on another thread, and every collective stays on the
  // training thread in the same order on every rank.
  //
  // Collective: keeps this step's pool gradient (grad_and_loss, after the
  // pool allreduce) as the one in flight; the leader starts exchanging it
  // with the other pools on exchange_thread_ (after the digest check that
  // is due, the link being idle then).
  void StartDelayedExchange(uint32_t batch_size);
  // Collective: waits for the exchange in flight, if any, and applies its
  // combined gradient. After it nothing is in flight.
  absl::Status ApplyInFlight(double* last_loss);
  bool delayed() const { return spec_.exchange().mode() == v1::EXCHANGE_MODE_DELAYED; }
  // `connect_deadline`: how long to wait for every peer (default: the
  // exchange timeout).
  absl::Status StartLink(std::chrono::milliseconds connect_deadline = {});
  std::chrono::milliseconds ExchangeDeadline() const {
    return std::chrono::milliseconds(options_.exchange_timeout_ms);
  }
  // Rounds of the link: two at start-up, then five per step index (codec
  // rounds, then the evaluation and the digest check after that step).
  static constexpr uint64_t kRoundResume = 0;
  static constexpr uint64_t kRoundState = 1;
  static constexpr int kEvalRound = 3;
  static constexpr int kDigestRound = 4;
  static uint64_t RoundOf(uint64_t step, int round) { return 2 + step * 5 + round; }
  absl::Status BroadcastState();
  // Rank 0: hands the state of this step to the store, on the saver's
  // thread when checkpoint.async is set. Failures become warnings. An async
  // save copies the state on the saver's threads: until
  // WaitForCheckpointCopy, the state (parameters, optimizer and codec state)
  // must not change. The step loop waits after the next forward and backward
  // pass, which read the parameters only.
  void SaveCheckpoint();
  void WaitForCheckpointCopy();
  // Rank 0: reports saves that finished (after waiting for all, if `wait`).
  void ReportSaves(bool wait);
  void ReportSave(const AsyncSaver::Finished& finished);
  // Collective: test accuracy and loss. The test set is sharded across every
  // rank of every active pool (ranks numbered as for the training batch);
  // the sums go through the pool allreduce and one exchange round, so every
  // pool gets the same figures at 1/N of the cost of evaluating it alone.
  // `round`: the link round the leaders sum the results in. When a pool is
  // lost during it, an evaluation that may be skipped is (nullopt: the
  // survivors go on training at once; the next evaluation comes as planned);
  // the last one is evaluated again within this pool.
  absl::StatusOr<std::optional<std::pair<double, double>>> Evaluate(uint64_t round,
                                                                    bool may_skip);
  // This rank's loss and correct-prediction sums over test samples
  // [begin, end).
  std::pair<double, double> EvaluateSlice(uint32_t begin, uint32_t end);
  // The end of a unit of work (a step, an evaluation batch, a checkpoint
  // save): the leader's progress counter, published to the peers.
  void TickProgress();
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
  // The codec state of the checkpoint being copied, and its step.
  CodecState checkpoint_codec_state_;
  std::optional<uint64_t> copying_step_;
  uint64_t step_ = 0;
  uint64_t schedule_steps_ = 0;  // the learning-rate schedule's horizon
  uint64_t cursor_ = 0;
  uint64_t last_saved_step_ = UINT64_MAX;
  bool resumed_ = false;
  std::string init_digest_;  // of the --init parameters, named as in the file
  int pool_index_ = 0;
  uint32_t rank_offset_ = 0;           // ranks of the pools before this one
  std::unique_ptr<Codec> codec_;       // leader of a multi-pool job only
  std::unique_ptr<Link> link_;         // leader, while several pools are active
  uint64_t fp32_bytes_exchanged_ = 0;  // written by the exchange thread while it runs

  // Delayed mode. in_flight_ holds (numel + 1 floats, like grad_and_loss)
  // the pool-summed gradient and loss of the step in flight; on the leader
  // the exchange thread turns it into the sum over every pool. The
  // training thread touches it, codec_, link_ and exchange_status_ only
  // when the thread is joined.
  at::Tensor in_flight_;
  bool has_in_flight_ = false;
  uint32_t in_flight_batch_ = 0;
  uint64_t in_flight_step_ = 0;  // the step whose gradient is in flight
  std::thread exchange_thread_;
  absl::Status exchange_status_;

  // Plans (coordinator mode). Every rank knows the active pools and the
  // generation; the leader also the peers' addresses and the plan client.
  bool following_plans() const { return !options_.coordinator.empty(); }
  bool Active(uint32_t pool) const {
    return std::find(active_.begin(), active_.end(), pool) != active_.end();
  }
  absl::Status AdoptPlan(const v1::Plan& plan);
  // Collective: the leader's active pools and their sizes reach every rank,
  // which derive their place in the global batch from them.
  absl::Status SharePlan();
  // Leader: rebuilds the link for `plan` and, with peers, agrees on the state
  // with them; follows newer plans while a peer is lost on the way.
  // `have_state`: whether this pool holds a state to offer (see
  // ReconcileAcrossPools); a pool already training always does.
  absl::Status FollowPlan(v1::Plan plan, bool* have_state);
  // Collective: the leader follows pending_plan_, then every rank the layout.
  absl::Status SwitchPlan();
  absl::Status JoinRunningJob(bool* have_state);
  // Leader: reports `lost` (pool indices) to the coordinator, lost `lost_for`
  // ago for `reason`, and waits for its decision (a plan of a newer
  // generation).
  absl::StatusOr<v1::Plan> AwaitPlanAfterLoss(const std::vector<uint32_t>& lost,
                                              std::chrono::milliseconds lost_for,
                                              const std::string& reason);
  // Leader: Link::Exchange, waiting for as long as the peers are alive and
  // progressing (worker/peer_wait.h). A lost peer fails it (DeadlineExceeded,
  // naming the peer and why) or, with a coordinator, is reported, and then
  // Aborted (with pending_plan_ set); so does a plan change while waiting.
  // kAtBoundary rounds (evaluation, digest check: every pool on the link does
  // them at the same step boundary, whatever plan it has seen) end only for a
  // plan that drops a pool of the link or stops this one; a join waits for
  // the boundary's switch.
  enum class RoundKind { kStep, kAtBoundary };
  absl::StatusOr<std::vector<std::string>> LeaderExchange(uint64_t round,
                                                          absl::string_view payload,
                                                          RoundKind kind = RoundKind::kStep);
  void StopLink();
  // Leader alone in its plan: a bare gRPC server on the link address.
  absl::Status StartStandby();
  void LogSamples(const std::vector<uint32_t>& batch, uint32_t begin, uint32_t end);
  uint64_t WanBytesSent() const {
    return wan_bytes_retired_ + (link_ != nullptr ? link_->Stats().wire_bytes_sent : 0);
  }

  std::vector<uint32_t> active_;  // pools that train now, ascending
  uint64_t generation_ = 0;
  uint32_t total_ranks_ = 0;
  std::vector<std::string> link_addresses_;  // leader; by pool index
  std::unique_ptr<PlanClient> plan_client_;  // leader, coordinator mode
  std::unique_ptr<grpc::Server> standby_;    // leader, alone in its plan
  std::unique_ptr<v1::GradientExchange::Service> standby_service_;
  std::optional<v1::Plan> pending_plan_;  // leader
  bool joining_ = false;
  bool stopped_ = false;
  uint64_t wan_bytes_retired_ = 0;  // sent by links since replaced
  int sample_log_fd_ = -1;
  ProgressMeter progress_;  // ticked on every rank; published by the leader
  std::mutex emit_mu_;
  // step_ for the exchange thread of delayed mode (its waiting events).
  std::atomic<uint64_t> shown_step_{0};
  double last_eval_seconds_ = 0;  // the last Evaluate's wall time
  PeerWaitPolicy wait_policy_;
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
      if (spec_.checkpoint().async()) {
        saver_ = std::make_unique<AsyncSaver>(store_.get());
        saver_->Reserve(Views(StateTensors(model_, *optimizer_)));
      }
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
    if (status.ok() && checkpoint.has_value() && codec_ != nullptr) {
      status = RestoreCodecState(*checkpoint);
    }
    bool have_state = checkpoint.has_value();
    if (status.ok() && joining_) {
      status = JoinRunningJob(&have_state);
    } else if (status.ok() && following_plans()) {
      v1::Plan plan;
      plan.set_generation(generation_);
      for (const v1::PoolSpec& pool : spec_.pools()) *plan.add_pools() = pool;
      for (uint32_t pool : active_) plan.add_active_pools(pool);
      for (const std::string& address : link_addresses_) plan.add_link_addresses(address);
      plan.set_reason("start");
      status = FollowPlan(std::move(plan), &have_state);
      plan_client_->Watch(generation_);
    } else if (status.ok() && link_ != nullptr) {
      status = ReconcileAcrossPools(&have_state);
    }
    if (have_state && !checkpoint.has_value()) checkpoint.emplace();
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

absl::Status Trainer::RestoreCodecState(const Checkpoint& checkpoint) {
  CodecState state = codec_->State();
  bool complete = true;
  for (auto& [name, values] : state) {
    const StoredTensor* stored = nullptr;
    for (const StoredTensor& t : checkpoint.tensors) {
      if (t.name == name) stored = &t;
    }
    if (stored == nullptr || stored->bytes.size() != values.size() * sizeof(float)) {
      complete = false;
      break;
    }
    std::memcpy(values.data(), stored->bytes.data(), stored->bytes.size());
  }
  if (!complete) {
    // Another codec, or none: its error feedback starts empty, which costs
    // at most a step's worth of delayed gradient.
    Emit({{"event", "warning"},
          {"message",
           absl::StrFormat("the checkpoint at step %d has no %s codec state; "
                           "error feedback starts empty",
                           checkpoint.manifest.step(), CodecName(spec_.exchange().codec()))}});
    return absl::OkStatus();
  }
  return codec_->LoadState(state);
}

// The leaders agree on where the job goes on: the newest state any pool
// holds (a checkpoint, or the live state of a pool already training). A pool
// that lacks it (a cloud that joined, or lost its disk) receives the whole
// state from the first pool that has it.
absl::Status Trainer::ReconcileAcrossPools(bool* have_state) {
  WaitForCheckpointCopy();  // the state may be replaced by a peer's
  const int64_t mine = *have_state ? static_cast<int64_t>(step_) : -1;
  absl::StatusOr<std::vector<std::string>> steps =
      LeaderExchange(kRoundResume, std::string(reinterpret_cast<const char*>(&mine), 8));
  if (!steps.ok()) return steps.status();
  int64_t newest = -1;
  int sender = -1;
  bool all_same = true;
  for (size_t pool = 0; pool < steps->size(); ++pool) {
    int64_t step = -1;
    if ((*steps)[pool].size() != sizeof(step)) {
      return absl::DataLossError("a peer sent a malformed resume message");
    }
    std::memcpy(&step, (*steps)[pool].data(), sizeof(step));
    all_same = all_same && step == mine;
    if (step > newest) {
      newest = step;
      sender = static_cast<int>(pool);
    }
  }
  // Every pool at the same step (or none with any state): nothing to send.
  if (newest < 0 || all_same) return absl::OkStatus();
  // Link positions and spec pool indices differ once a plan leaves pools out.
  const auto cloud_at = [this](int position) {
    return spec_.pools(static_cast<int>(active_[position])).cloud();
  };
  std::string payload;
  if (sender == link_->pool_index()) {
    const uint64_t header[2] = {step_, cursor_};
    payload.append(reinterpret_cast<const char*>(header), sizeof(header));
    for (auto& [name, tensor] : StateTensors(model_, *optimizer_)) {
      payload.append(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
    }
  }
  absl::StatusOr<std::vector<std::string>> states = LeaderExchange(kRoundState, payload);
  if (!states.ok()) return states.status();
  if (mine == newest) return absl::OkStatus();
  const std::string& state = (*states)[sender];
  size_t offset = 2 * sizeof(uint64_t);
  size_t expected = offset;
  for (auto& [name, tensor] : StateTensors(model_, *optimizer_)) expected += tensor.nbytes();
  if (state.size() != expected) {
    return absl::DataLossError(
        absl::StrFormat("pool %s sent a state of %d bytes; this model and optimizer need %d",
                        cloud_at(sender), state.size(), expected));
  }
  uint64_t header[2];
  std::memcpy(header, state.data(), sizeof(header));
  for (auto& [name, tensor] : StateTensors(model_, *optimizer_)) {
    std::memcpy(tensor.data_ptr(), state.data() + offset, tensor.nbytes());
    offset += tensor.nbytes();
  }
  step_ = header[0];
  cursor_ = header[1];
  last_saved_step_ = UINT64_MAX;  // this pool's store does not have it yet
  *have_state = true;
  Emit({{"event", "warning"},
        {"message", absl::StrFormat("pool %s joins at step %d with the state of pool %s",
                                    spec_.pools(pool_index_).cloud(), step_, cloud_at(sender))}});
  return absl::OkStatus();
}

absl::Status Trainer::StartLink(std::chrono::milliseconds connect_deadline) {
  if (codec_ == nullptr) {
    std::vector<std::vector<int64_t>> shapes;
    for (const FlatModel::Slot& slot : model_.slots) shapes.push_back(slot.shape);
    absl::StatusOr<std::unique_ptr<Codec>> codec =
        MakeCodec(spec_.exchange(), shapes, spec_.train().seed());
    if (!codec.ok()) return codec.status();
    codec_ = std::move(*codec);
  }
  GrpcLinkOptions link;
  // Links of different plan generations refuse each other (the job id must
  // match), so a pool still on an old plan cannot mix into a new one.
  link.job_id = following_plans() ? absl::StrCat(spec_.name(), "#", generation_) : spec_.name();
  link.cloud = spec_.pools(pool_index_).cloud();
  link.pool_count = static_cast<int>(active_.size());
  for (size_t i = 0; i < active_.size(); ++i) {
    if (active_[i] == static_cast<uint32_t>(pool_index_)) link.pool_index = static_cast<int>(i);
  }
  link.listen_address = options_.link_listen;
  link.streams_per_peer = static_cast<int>(spec_.exchange().streams());
  if (static_cast<int>(link_addresses_.size()) != spec_.pools_size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--link-peers names %d addresses for %d pools", link_addresses_.size(),
                        spec_.pools_size()));
  }
  for (uint32_t pool : active_) link.peer_addresses.push_back(link_addresses_[pool]);
  if (options_.insecure) {
    link.server_credentials = grpc::InsecureServerCredentials();
    link.channel_credentials = grpc::InsecureChannelCredentials();
  } else {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server =
        ServerCredentials(options_.certs_dir);
    if (!server.ok()) return server.status();
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel =
        ChannelCredentials(options_.certs_dir);
    if (!channel.ok()) return channel.status();
    link.server_credentials = *server;
    link.channel_credentials = *channel;
  }
  absl::StatusOr<std::unique_ptr<GrpcLink>> created = GrpcLink::Create(link);
  if (!created.ok()) return created.status();
  link_ = std::move(*created);
  link_->ReportProgress(progress_.units(), progress_.longest_recent());
  // Fail fast on a wrong address, certificate or job before any work.
  return link_->Connect(connect_deadline.count() > 0 ? connect_deadline : ExchangeDeadline());
}

void Trainer::StopLink() {
  if (standby_ != nullptr) {
    standby_->Shutdown(std::chrono::system_clock::now());
    standby_.reset();
  }
  if (link_ == nullptr) return;
  wan_bytes_retired_ += link_->Stats().wire_bytes_sent;
  link_.reset();
}

absl::Status Trainer::StartStandby() {
  grpc::ServerBuilder builder;
  ListenExclusively(builder);
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options_.insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server =
        ServerCredentials(options_.certs_dir);
    if (!server.ok()) return server.status();
    credentials = *server;
  }
  int port = 0;
  builder.AddListeningPort(options_.link_listen, credentials, &port);
  // A server needs a service; this one answers every call UNIMPLEMENTED.
  if (standby_service_ == nullptr) {
    standby_service_ = std::make_unique<v1::GradientExchange::Service>();
  }
  builder.RegisterService(standby_service_.get());
  standby_ = builder.BuildAndStart();
  if (standby_ == nullptr) {
    return absl::UnavailableError(
        absl::StrFormat("cannot listen on %s for joining pools", options_.link_listen));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Trainer::LeaderExchange(uint64_t round,
                                                                 absl::string_view payload,
                                                                 RoundKind kind) {
  const Clock::time_point start = Clock::now();
  Clock::time_point shown_at = start - kShowWaitingEvery;
  bool shown = false;
  const auto cloud_of = [this](uint32_t link_index) {
    return spec_.pools(static_cast<int>(active_[link_index])).cloud();
  };
  const auto end_waiting = [&] {
    if (!shown) return;
    Emit({{"event", "waiting"}, {"message", ""}, {"step", shown_step_.load()}});
    // The wait was the peers' time, not a unit of this pool's work.
    progress_.Start();
  };
  while (true) {
    absl::StatusOr<std::vector<std::string>> all = link_->Exchange(round, payload, kExchangeSlice);
    if (all.ok() || (!absl::IsDeadlineExceeded(all.status()) && !absl::IsUnavailable(all.status()))) {
      end_waiting();
      return all;
    }
    if (plan_client_ != nullptr) {
      // A newer plan ends the round on every pool alike: each has sent its
      // payload when it started the round, so a peer still in the round
      // completes it; the new plan takes effect at the next step.
      std::optional<v1::Plan> newer = plan_client_->Newer(generation_);
      bool ends = newer.has_value();
      if (ends && kind == RoundKind::kAtBoundary && !newer->stop()) {
        ends = false;
        for (uint32_t pool : active_) {
          ends = ends || std::find(newer->active_pools().begin(), newer->active_pools().end(),
                                   pool) == newer->active_pools().end();
        }
      }
      if (ends) {
        end_waiting();
        pending_plan_ = std::move(newer);
        return absl::AbortedError("the job's plan changed during an exchange");
      }
    }
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    const std::vector<PeerHealth> peers = link_->Peers();
    const PeerJudgement judgement =
        JudgePeers(peers, waited, progress_.longest_recent(), wait_policy_, cloud_of);
    if (judgement.verdict == PeerVerdict::kWait) {
      if (waited >= kShowWaitingAfter && Clock::now() - shown_at >= kShowWaitingEvery) {
        std::vector<std::string> names;
        for (uint32_t peer : judgement.waiting) names.push_back(cloud_of(peer));
        const uint64_t step = shown_step_.load();
        Emit({{"event", "waiting"},
              {"message", absl::StrFormat("%s (alive) for %.0f s at step %d",
                                          absl::StrJoin(names, ", "), waited.count() / 1000.0,
                                          step)},
              {"step", step}});
        shown_at = Clock::now();
        shown = true;
      }
      continue;
    }
    end_waiting();
    const std::string message = absl::StrFormat("exchange of round %d: %s", round, judgement.reason);
    if (plan_client_ == nullptr) {
      return absl::DeadlineExceededError(absl::StrCat(message, " (", all.status().message(), ")"));
    }
    Emit({{"event", "warning"}, {"message", absl::StrCat(message, "; asking the coordinator")}});
    std::vector<uint32_t> lost;
    for (uint32_t peer : judgement.lost) lost.push_back(active_[peer]);
    absl::StatusOr<v1::Plan> plan = AwaitPlanAfterLoss(lost, judgement.lost_for, judgement.reason);
    if (!plan.ok()) return plan.status();
    pending_plan_ = std::move(*plan);
    return absl::AbortedError("the job's plan changed after a peer was lost");
  }
}

absl::StatusOr<v1::Plan> Trainer::AwaitPlanAfterLoss(const std::vector<uint32_t>& lost,
                                                     std::chrono::milliseconds lost_for,
                                                     const std::string& reason) {
  PlanReport report;
  report.step = step_;
  report.unreachable_for_ms = static_cast<uint32_t>(
      std::min<int64_t>(lost_for.count(), std::numeric_limits<uint32_t>::max()));
  report.unreachable_pools = lost;
  report.reason = reason;
  const Clock::time_point deadline = Clock::now() + kPlanDecisionDeadline;
  absl::Status last;
  while (Clock::now() < deadline) {
    absl::StatusOr<v1::Plan> plan =
        plan_client_->Sync(generation_, report, std::chrono::milliseconds(1000));
    if (plan.ok() && (plan->generation() > generation_ || plan->stop())) return plan;
    if (!plan.ok()) {
      last = plan.status();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // coordinator restarting
    }
  }
  return absl::DeadlineExceededError(absl::StrFormat(
      "the peers of pool %s were lost (%s) and the coordinator did not decide within %d s%s",
      spec_.pools(pool_index_).cloud(), reason,
      std::chrono::duration_cast<std::chrono::seconds>(kPlanDecisionDeadline).count(),
      last.ok() ? "" : absl::StrCat(" (", last.message(), ")")));
}

void Trainer::TickProgress() {
  progress_.Tick();
  if (link_ != nullptr) link_->ReportProgress(progress_.units(), progress_.longest_recent());
}

absl::Status Trainer::AdoptPlan(const v1::Plan& plan) {
  if (plan.stop()) {
    return absl::AbortedError(absl::StrFormat("pool %s was stopped by the coordinator: %s",
                                              spec_.pools(pool_index_).cloud(), plan.reason()));
  }
  if (plan.pools_size() > kMaxPools || plan.active_pools_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the coordinator sent a plan with %d pools, %d active", plan.pools_size(),
                        plan.active_pools_size()));
  }
  if (plan.pools_size() > 0) {
    spec_.clear_pools();
    for (const v1::PoolSpec& pool : plan.pools()) *spec_.add_pools() = pool;
  }
  if (pool_index_ >= spec_.pools_size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--pool %d: the coordinator's plan has %d pools", pool_index_, spec_.pools_size()));
  }
  active_.assign(plan.active_pools().begin(), plan.active_pools().end());
  for (uint32_t pool : active_) {
    if (pool >= static_cast<uint32_t>(spec_.pools_size())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the coordinator's plan makes pool %d active; it has %d", pool, spec_.pools_size()));
    }
  }
  std::sort(active_.begin(), active_.end());
  generation_ = plan.generation();
  link_addresses_.assign(plan.link_addresses().begin(), plan.link_addresses().end());
  return absl::OkStatus();
}

absl::Status Trainer::SharePlan() {
  // generation, pool count, workers by pool, active count, active pools
  std::vector<uint64_t> packed(3 + 2 * kMaxPools, 0);
  if (comm_.rank() == 0) {
    packed[0] = generation_;
    packed[1] = static_cast<uint64_t>(spec_.pools_size());
    for (int i = 0; i < spec_.pools_size(); ++i) packed[2 + i] = spec_.pools(i).workers();
    packed[2 + kMaxPools] = active_.size();
    for (size_t i = 0; i < active_.size(); ++i) packed[3 + kMaxPools + i] = active_[i];
  }
  absl::Status status = comm_.Broadcast(packed.data(), packed.size() * sizeof(uint64_t), 0);
  if (!status.ok()) return status;
  generation_ = packed[0];
  while (spec_.pools_size() < static_cast<int>(packed[1])) spec_.add_pools();
  while (spec_.pools_size() > static_cast<int>(packed[1])) spec_.mutable_pools()->RemoveLast();
  for (int i = 0; i < spec_.pools_size(); ++i) {
    spec_.mutable_pools(i)->set_workers(static_cast<uint32_t>(packed[2 + i]));
  }
  active_.clear();
  for (uint64_t i = 0; i < packed[2 + kMaxPools]; ++i) {
    active_.push_back(static_cast<uint32_t>(packed[3 + kMaxPools + i]));
  }
  rank_offset_ = 0;
  total_ranks_ = 0;
  for (uint32_t pool : active_) {
    if (pool < static_cast<uint32_t>(pool_index_)) rank_offset_ += spec_.pools(pool).workers();
    total_ranks_ += spec_.pools(pool).workers();
  }
  return absl::OkStatus();
}

absl::Status Trainer::FollowPlan(v1::Plan plan, bool* have_state) {
  const Clock::time_point deadline = Clock::now() + kPlanDecisionDeadline;
  while (true) {
    absl::Status status = AdoptPlan(plan);
    if (!status.ok()) return status;
    StopLink();
    if (!Active(static_cast<uint32_t>(pool_index_))) {
      return absl::AbortedError(
          absl::StrFormat("pool %s is no longer in the job's plan (generation %d): %s",
                          spec_.pools(pool_index_).cloud(), generation_, plan.reason()));
    }
    Emit({{"event", "plan"},
          {"generation", generation_},
          {"active", active_},
          {"step", step_},
          {"reason", plan.reason()}});
    // Alone, the pool still answers on its link address, so that a pool
    // coming back can tell the path between them works before it joins.
    if (active_.size() < 2) return spec_.pools_size() > 1 ? StartStandby() : absl::OkStatus();
    status = StartLink();
    if (status.ok()) status = ReconcileAcrossPools(have_state);
    if (status.ok()) return absl::OkStatus();
    if (absl::IsAborted(status) && pending_plan_.has_value()) {
      plan = std::move(*pending_plan_);
      pending_plan_.reset();
      continue;
    }
    // A link that could not connect, or a peer refusing this generation: the
    // coordinator decides what happens to the pools we could not reach.
    if (!absl::IsDeadlineExceeded(status) && !absl::IsUnavailable(status) &&
        !absl::IsFailedPrecondition(status)) {
      return status;
    }
    if (Clock::now() >= deadline) return status;
    std::vector<uint32_t> others;
    for (uint32_t pool : active_) {
      if (pool != static_cast<uint32_t>(pool_index_)) others.push_back(pool);
    }
    absl::StatusOr<v1::Plan> newer =
        AwaitPlanAfterLoss(others, ExchangeDeadline(),
                           absl::StrCat("not connected: ", status.message()));
    if (!newer.ok()) return newer.status();
    plan = std::move(*newer);
  }
}

absl::Status Trainer::SwitchPlan() {
  absl::Status status;
  if (comm_.rank() == 0) {
    v1::Plan plan = std::move(*pending_plan_);
    pending_plan_.reset();
    bool have_state = true;
    status = FollowPlan(std::move(plan), &have_state);
    if (status.ok()) plan_client_->Watch(generation_);
  }
  status = ShareStatus(comm_, status);
  if (!status.ok()) return status;
  return SharePlan();
}

// A pool launched while the job runs elsewhere: it reaches every active pool
// first (a cloud behind a partition stays out instead of stalling the
// others), then asks the coordinator to join and takes the state at the
// step boundary where the others let it in.
absl::Status Trainer::JoinRunningJob(bool* have_state) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options_.insecure) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel =
        ChannelCredentials(options_.certs_dir);
    if (!channel.ok()) return channel.status();
    credentials = *channel;
  }
  const Clock::time_point deadline = Clock::now() + kJoinDeadline;
  bool announced = false;
  while (Clock::now() < deadline) {
    std::optional<v1::Plan> newer = plan_client_->Newer(generation_);
    if (newer.has_value()) {
      absl::Status status = AdoptPlan(*newer);
      if (!status.ok()) return status;
    }
    std::vector<std::string> unreachable;
    for (uint32_t pool : active_) {
      std::shared_ptr<grpc::Channel> channel =
          grpc::CreateChannel(link_addresses_[pool], credentials);
      if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                     std::chrono::milliseconds(1000))) {
        unreachable.push_back(spec_.pools(static_cast<int>(pool)).cloud());
      }
    }
    if (!unreachable.empty()) {
      if (!announced) {
        Emit({{"event", "warning"},
              {"message", absl::StrFormat("pool %s waits to join: cannot reach %s yet",
                                          spec_.pools(pool_index_).cloud(),
                                          absl::StrJoin(unreachable, ", "))}});
        announced = true;
      }
      continue;
    }
    PlanReport report;
    report.ready_to_join = true;
    report.step = *have_state ? step_ : 0;
    absl::StatusOr<v1::Plan> plan =
        plan_client_->Sync(generation_, report, std::chrono::milliseconds(2000));
    if (!plan.ok()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // coordinator restarting
      continue;
    }
    if (plan->stop()) return AdoptPlan(*plan);
    bool in = false;
    for (uint32_t pool : plan->active_pools())
      in = in || pool == static_cast<uint32_t>(pool_index_);
    if (!in) {
      absl::Status status = AdoptPlan(*plan);
      if (!status.ok()) return status;
      continue;
    }
    absl::Status status = AdoptPlan(*plan);
    if (!status.ok()) return status;
    if (active_.size() < 2) {
      return absl::FailedPreconditionError(
          "the coordinator let this pool join a job with no other active pool to take the "
          "state from");
    }
    // The running pools switch to this plan at their next step boundary,
    // after that step's evaluation and checkpoint: wait for them as long as
    // a peer may make no progress.
    status = StartLink(std::max(ExchangeDeadline(), wait_policy_.stuck_floor));
    if (status.ok()) status = ReconcileAcrossPools(have_state);
    if (status.ok()) {
      joining_ = false;
      return absl::OkStatus();
    }
    if (absl::IsAborted(status) && pending_plan_.has_value()) {
      status = AdoptPlan(*pending_plan_);
      pending_plan_.reset();
      if (!status.ok()) return status;
    }
    StopLink();
    Emit({{"event", "warning"},
          {"message",
           absl::StrFormat("pool %s could not join at generation %d: %s",
                           spec_.pools(pool_index_).cloud(), generation_, status.message())}});
  }
  return absl::DeadlineExceededError(absl::StrFormat(
      "pool %s could not join the job within %d minutes", spec_.pools(pool_index_).cloud(),
      std::chrono::duration_cast<std::chrono::minutes>(kJoinDeadline).count()));
}

absl::Status Trainer::ExchangeGradients(uint64_t step, float* grad) {
  const size_t n = static_cast<size_t>(model_.numel);
  const double loss = grad[n];
  std::string mine(reinterpret_cast<const char*>(&loss), sizeof(loss));
  std::string encoded;
  // A step that a lost pool keeps from completing is redone; its error
  // feedback must not count twice.
  CodecState before;
  if (plan_client_ != nullptr) before = codec_->State();
  const auto restore_on_abort = [&](const absl::Status& status) {
    if (absl::IsAborted(status) && plan_client_ != nullptr) {
      absl::Status restored = codec_->LoadState(before);
      if (!restored.ok()) return restored;
    }
    return status;
  };
  absl::Status status = codec_->BeginStep(grad, n, &encoded);
  if (!status.ok()) return status;
  mine += encoded;
  absl::StatusOr<std::vector<std::string>> all = LeaderExchange(RoundOf(step, 0), mine);
  if (!all.ok()) return restore_on_abort(all.status());
  double total_loss = 0;
  std::vector<std::string> payloads;
  for (const std::string& p : *all) {
    if (p.size() < sizeof(double)) return absl::DataLossError("a peer sent a short payload");
    double peer_loss;
    std::memcpy(&peer_loss, p.data(), sizeof(peer_loss));
    total_loss += peer_loss;
    payloads.push_back(p.substr(sizeof(double)));
  }
  for (int round = 1; round < codec_->rounds(); ++round) {
    status = codec_->NextRound(payloads, &encoded);
    if (!status.ok()) return status;
    all = LeaderExchange(RoundOf(step, round), encoded);
    if (!all.ok()) return restore_on_abort(all.status());
    payloads = std::move(*all);
  }
  status = codec_->FinishStep(payloads, grad, n);
  if (!status.ok()) return status;
  grad[n] = static_cast<float>(total_loss);
  fp32_bytes_exchanged_ += n * sizeof(float) * (active_.size() - 1);
  return absl::OkStatus();
}

// Every K steps (and at the end) the leaders compare a digest of the model
// and optimizer state: every cloud must hold the same bits.
absl::Status Trainer::CheckCloudsAgree(uint64_t round, uint64_t applied) {
  const std::string digest = StateDigest(Views(StateTensors(model_, *optimizer_)));
  absl::StatusOr<std::vector<std::string>> all =
      LeaderExchange(round, digest, RoundKind::kAtBoundary);
  if (!all.ok()) return all.status();
  for (size_t pool = 0; pool < all->size(); ++pool) {
    if ((*all)[pool] != digest) {
      return absl::InternalError(absl::StrFormat(
          "the parameters of pool %s differ from pool %s's after step %d: the clouds diverged "
          "(digests %s and %s)",
          spec_.pools(static_cast<int>(active_[pool])).cloud(), spec_.pools(pool_index_).cloud(),
          applied, (*all)[pool].substr(0, 16), digest.substr(0, 16)));
    }
  }
  return absl::OkStatus();
}

void Trainer::StartDelayedExchange(uint32_t batch_size) {
  if (!in_flight_.defined()) in_flight_ = torch::empty({model_.numel + 1}, torch::kFloat);
  in_flight_.copy_(model_.grad_and_loss);
  has_in_flight_ = true;
  in_flight_batch_ = batch_size;
  in_flight_step_ = step_;
  if (comm_.rank() != 0 || link_ == nullptr) return;
  // Nothing is in flight when this is called, so the updates of steps
  // 0..step_-1 are applied: the digest check for step_ % K == 0 compares
  // the same state sync mode compares after step_.
  const uint64_t applied = step_;
  const uint32_t digest_every = spec_.exchange().digest_every_steps();
  const bool check = applied != 0 && digest_every != 0 && applied % digest_every == 0;
  float* buffer = in_flight_.data_ptr<float>();
  exchange_thread_ = std::thread([this, applied, check, buffer] {
    try {
      torch::set_num_threads(1);
      // The training thread only reads the parameters and optimizer state
      // until it joins this thread (forward and backward write gradients).
      exchange_status_ =
          check ? CheckCloudsAgree(RoundOf(applied - 1, kDigestRound), applied) : absl::OkStatus();
      if (exchange_status_.ok()) exchange_status_ = ExchangeGradients(applied, buffer);
    } catch (const std::exception& e) {
      exchange_status_ = absl::InternalError(absl::StrCat("libtorch: ", e.what()));
    }
  });
}

absl::Status Trainer::ApplyInFlight(double* last_loss) {
  if (!has_in_flight_) return absl::OkStatus();
  has_in_flight_ = false;
  int64_t action = kProceed;
  absl::Status leader_status;
  if (comm_.rank() == 0 && exchange_thread_.joinable()) {
    exchange_thread_.join();
    leader_status = exchange_status_;
    if (!leader_status.ok()) action = kFail;
  }
  absl::Status status;
  if (spec_.pools_size() > 1) {
    status = comm_.Broadcast(&action, sizeof(action), 0);
    if (!status.ok()) return status;
  }
  if (action == kFail) return ShareStatus(comm_, leader_status);
  if (active_.size() > 1) {
    status = comm_.Broadcast(in_flight_.data_ptr(), in_flight_.nbytes(), 0);
    if (!status.ok()) return status;
  }
  *last_loss = in_flight_.data_ptr<float>()[model_.numel] / in_flight_batch_;
  torch::NoGradGuard no_grad;
  at::Tensor grad = in_flight_.narrow(0, 0, model_.numel);
  optimizer_->SetLr(ScheduledLr(spec_.train(), in_flight_step_, schedule_steps_));
  optimizer_->Step(model_.params, grad);
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
  WaitForCheckpointCopy();  // the previous one's codec state is still read
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
  std::vector<TensorView> views = Views(StateTensors(model_, *optimizer_));
  // The codec's error feedback differs from cloud to cloud; each cloud keeps
  // its own with its checkpoint.
  checkpoint_codec_state_.clear();
  if (codec_ != nullptr) checkpoint_codec_state_ = codec_->State();
  for (const auto& [name, values] : checkpoint_codec_state_) {
    views.push_back({name,
                     v1::DTYPE_FLOAT32,
                     {static_cast<int64_t>(values.size())},
                     values.data(),
                     values.size() * sizeof(float)});
  }
  if (saver_ != nullptr) {
    saver_->Begin(std::move(manifest), views, spec_.checkpoint().keep());
    copying_step_ = step_;
    stall_ms_[step_] = SecondsSince(start) * 1000;
    return;
  }
  absl::StatusOr<v1::CheckpointManifest> saved =
      store_->Save(std::move(manifest), views, spec_.checkpoint().keep());
  stall_ms_[step_] = SecondsSince(start) * 1000;
  ReportSave({step_, std::move(saved), SecondsSince(start)});
}

void Trainer::WaitForCheckpointCopy() {
  if (!copying_step_.has_value()) return;
  const Clock::time_point start = Clock::now();
  saver_->WaitCopied();
  stall_ms_[*copying_step_] += SecondsSince(start) * 1000;
  copying_step_.reset();
}

void Trainer::ReportSaves(bool wait) {
  if (saver_ == nullptr) return;
  if (wait) {
    WaitForCheckpointCopy();
    saver_->Wait();
  }
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

std::pair<double, double> Trainer::EvaluateSlice(uint32_t begin, uint32_t end) {
  torch::NoGradGuard no_grad;
  std::vector<uint32_t> indices(end - begin);
  for (uint32_t i = begin; i < end; ++i) indices[i - begin] = i;
  double loss = 0;
  double correct = 0;
  for (uint32_t first = begin; first < end; first += kEvalBatch) {
    const int64_t n = std::min<int64_t>(kEvalBatch, end - first);
    at::Tensor logits = model_.network->Forward(Images(test_, indices.data() + (first - begin), n));
    at::Tensor labels =
        torch::from_blob(const_cast<uint8_t*>(test_.labels.data()) + first, {n}, torch::kUInt8)
            .to(torch::kLong);
    loss += torch::nn::functional::cross_entropy(
                logits, labels,
                torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += logits.argmax(1).eq(labels).sum().item<double>();
    TickProgress();
  }
  return {loss, correct};
}

absl::StatusOr<std::optional<std::pair<double, double>>> Trainer::Evaluate(uint64_t round,
                                                                           bool may_skip) {
  const Clock::time_point start = Clock::now();
  // Across the active pools when there are several; within this pool alone
  // when a lost pool interrupted that and the evaluation may not be skipped
  // (the plan changes at the next step).
  bool across = active_.size() > 1 && !options_.eval_per_pool;
  while (true) {
    const uint32_t shard = across ? rank_offset_ + comm_.rank() : comm_.rank();
    const uint32_t shards = across ? total_ranks_ : comm_.size();
    const auto [begin, end] = GlobalSampler::RankSlice(test_.count, shard, shards);
    double sums[2];  // loss, correct
    std::tie(sums[0], sums[1]) = EvaluateSlice(begin, end);
    absl::Status status = comm_.AllreduceSum(sums, 2);
    if (!status.ok()) return status;
    if (across) {
      enum : int64_t { kSummed = 0, kFailed = 1, kAlone = 2, kSkipped = 3 };
      int64_t action = kSummed;
      absl::Status leader_status;
      if (comm_.rank() == 0) {
        // Delayed mode: the link is free once the exchange in flight is
        // done (its gradient is applied at the next step, as always).
        if (exchange_thread_.joinable()) exchange_thread_.join();
        if (!exchange_status_.ok()) {
          leader_status = exchange_status_;
          action = kFailed;
        } else if (link_ == nullptr) {
          action = kAlone;
        } else {
          const std::string mine(reinterpret_cast<const char*>(sums), sizeof(sums));
          absl::StatusOr<std::vector<std::string>> all =
              LeaderExchange(round, mine, RoundKind::kAtBoundary);
          if (all.ok()) {
            sums[0] = sums[1] = 0;
            for (const std::string& p : *all) {
              double theirs[2];
              if (p.size() != sizeof(theirs)) {
                leader_status = absl::DataLossError("a peer sent a malformed evaluation payload");
                action = kFailed;
                break;
              }
              std::memcpy(theirs, p.data(), sizeof(theirs));
              sums[0] += theirs[0];  // in pool order, so every pool sums alike
              sums[1] += theirs[1];
            }
          } else if (absl::IsAborted(all.status()) && pending_plan_.has_value()) {
            action = may_skip ? kSkipped : kAlone;
          } else {
            leader_status = all.status();
            action = kFailed;
          }
        }
      }
      status = comm_.Broadcast(&action, sizeof(action), 0);
      if (!status.ok()) return status;
      if (action == kFailed) return ShareStatus(comm_, leader_status);
      if (action == kSkipped) return std::nullopt;
      if (action == kAlone) {
        across = false;
        continue;
      }
      status = comm_.Broadcast(sums, sizeof(sums), 0);
      if (!status.ok()) return status;
    }
    last_eval_seconds_ = SecondsSince(start);
    return std::make_optional(std::make_pair(sums[1] / test_.count, sums[0] / test_.count));
  }
}

void Trainer::LogSamples(const std::vector<uint32_t>& batch, uint32_t begin, uint32_t end) {
  if (sample_log_fd_ < 0) return;
  std::string line = absl::StrFormat("%d %d", step_, generation_);
  for (uint32_t i = begin; i < end; ++i) absl::StrAppend(&line, " ", batch[i]);
  line += "\n";
  // One write per line: a rank killed mid-run leaves whole lines behind.
  if (::write(sample_log_fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    std::cerr << "tandem worker: cannot append to the sample log: " << std::strerror(errno) << "\n";
  }
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
  absl::StatusOr<v1::JobSpec> spec = LoadSpec(options_.spec_path);
  if (!spec.ok()) return spec.status();
  spec_ = std::move(*spec);
  // The learning-rate schedule spans the job as its spec says; --max-steps
  // only stops this run early (so a run stopped and resumed is the same run).
  const uint64_t spec_max_steps = spec_.train().max_steps();
  if (options_.max_steps != 0) spec_.mutable_train()->set_max_steps(options_.max_steps);
  const v1::TrainSpec& train = spec_.train();
  pool_index_ = static_cast<int>(options_.pool_index);
  wait_policy_.liveness = std::chrono::milliseconds(options_.liveness_ms);
  wait_policy_.stuck_floor = std::chrono::milliseconds(options_.stuck_after_ms);
  wait_policy_.slow_floor = 2 * wait_policy_.stuck_floor;
  if (pool_index_ >= spec_.pools_size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--pool %d: the spec has %d pools", pool_index_, spec_.pools_size()));
  }
  for (uint32_t i = 0; i < static_cast<uint32_t>(spec_.pools_size()); ++i) active_.push_back(i);
  link_addresses_ = options_.link_peers;
  absl::Status status;
  if (following_plans() && comm_.rank() == 0) {
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (!options_.insecure) {
      absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel =
          ChannelCredentials(options_.certs_dir);
      status = channel.status();
      if (channel.ok()) credentials = *channel;
    }
    if (status.ok()) {
      plan_client_ = std::make_unique<PlanClient>(options_.coordinator, credentials, spec_.name(),
                                                  options_.pool_index);
      absl::StatusOr<v1::Plan> plan =
          plan_client_->Sync(0, PlanReport{}, std::chrono::milliseconds(0));
      status = plan.ok() ? AdoptPlan(*plan) : plan.status();
    }
    if (status.ok()) {
      joining_ = !Active(options_.pool_index);
      plan_client_->Watch(generation_);
    }
  }
  if (following_plans()) {
    status = ShareStatus(comm_, status);
    if (!status.ok()) return status;
    status = SharePlan();
    if (!status.ok()) return status;
  } else {
    total_ranks_ = TotalWorkers(spec_);
    for (int i = 0; i < pool_index_; ++i) rank_offset_ += spec_.pools(i).workers();
  }
  if (!options_.sample_log_dir.empty()) {
    const std::string path =
        absl::StrFormat("%s/%s-l%d-r%d.log", options_.sample_log_dir,
                        spec_.pools(pool_index_).cloud(), options_.launch, comm_.rank());
    sample_log_fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (sample_log_fd_ < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--sample-log: cannot open %s: %s", path, std::strerror(errno)));
    }
  }
  const v1::PoolSpec& pool = spec_.pools(pool_index_);
  if (pool.workers() != static_cast<uint32_t>(comm_.size())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("pool %s has %d workers in the spec but mpirun started %d ranks",
                        pool.cloud(), pool.workers(), comm_.size()));
  }
  if (delayed() && following_plans()) {
    // Re-planning redoes a step from the state before it; with an update in
    // flight there is no such state to redo from.
    return absl::FailedPreconditionError(
        "exchange.mode: delayed runs only under `tandem train`, not under a coordinator (its "
        "failover and joins re-plan at step boundaries, which a delayed exchange does not "
        "have); use exchange.mode: sync for this job");
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

  // With a coordinator the link starts once the store is open (a peer that
  // cannot be reached is then the coordinator's to decide about).
  if (active_.size() > 1 && !following_plans() && comm_.rank() == 0) {
    status = StartLink();
    if (!status.ok()) return status;
  }
  status = OpenStoreAndResume();
  if (!status.ok()) return status;
  // A pool that joined a running job knows its place only now.
  if (following_plans()) {
    status = SharePlan();
    if (!status.ok()) return status;
  }

  const uint64_t total_steps = sampler_->TotalSteps(train.epochs(), train.max_steps());
  schedule_steps_ = sampler_->TotalSteps(train.epochs(), spec_max_steps);
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

  // Test hook: TANDEM_TESTING_STALL_AT=CLOUD:STEP makes the leader of that
  // cloud's pool hang at that step, as a stuck training loop would, while its
  // process and link stay alive (tests of the "stuck" verdict).
  std::optional<uint64_t> stall_at;
  if (const char* hook = std::getenv("TANDEM_TESTING_STALL_AT"); hook != nullptr) {
    const std::string text(hook);
    const size_t colon = text.rfind(':');
    if (colon != std::string::npos && text.substr(0, colon) == spec_.pools(pool_index_).cloud()) {
      stall_at = std::strtoull(text.c_str() + colon + 1, nullptr, 10);
    }
  }
  progress_.Start();
  while (step_ < total_steps) {
    shown_step_ = step_;
    if (stall_at.has_value() && step_ == *stall_at && comm_.rank() == 0) {
      Emit({{"event", "warning"}, {"message", "TANDEM_TESTING_STALL_AT: the leader hangs here"}});
      while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    const Clock::time_point step_start = Clock::now();
    const std::vector<uint32_t> batch = sampler_->GlobalBatch(cursor_);
    const uint32_t batch_size = static_cast<uint32_t>(batch.size());
    // This rank's slice of the global batch: ranks are numbered across every
    // pool of the job, so the batch does not depend on the layout.
    const auto [begin, end] =
        GlobalSampler::RankSlice(batch_size, rank_offset_ + comm_.rank(), total_ranks_);
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
    // Logged when computed: a pool lost right after the exchange still
    // contributed its slice to the step the others complete.
    LogSamples(batch, begin, end);
    status = comm_.AllreduceSum(model_.grad_and_loss.data_ptr<float>(), model_.numel + 1);
    if (!status.ok()) return status;
    // From here on the step changes the state (codec, optimizer).
    WaitForCheckpointCopy();
    int64_t action = kProceed;
    if (delayed()) {
      // The previous step's exchange ran under this step's compute; its
      // update is applied now, and this step's exchange starts.
      status = ApplyInFlight(&last_loss);
      if (!status.ok()) return status;
      StartDelayedExchange(batch_size);
    }
    // The leaders combine their pools' gradients across clouds; the leader
    // then tells its pool how the step ends and hands it the combined one.
    absl::Status leader_status;
    if (!delayed() && comm_.rank() == 0) {
      if (pending_plan_.has_value()) {
        action = kRedo;  // a peer was lost after the previous step
      } else if (link_ != nullptr) {
        leader_status = ExchangeGradients(step_, model_.grad_and_loss.data_ptr<float>());
        if (absl::IsAborted(leader_status) && pending_plan_.has_value()) {
          action = kRedo;
        } else if (!leader_status.ok()) {
          action = kFail;
        }
      }
      if (action == kProceed && plan_client_ != nullptr) {
        plan_client_->SetStep(step_);
        std::optional<v1::Plan> newer = plan_client_->Newer(generation_);
        if (newer.has_value()) {
          action = newer->stop() ? kStop : kReplanAfter;
          pending_plan_ = std::move(newer);
        }
      }
    }
    if (!delayed() && (following_plans() || spec_.pools_size() > 1)) {
      status = comm_.Broadcast(&action, sizeof(action), 0);
      if (!status.ok()) return status;
    }
    if (action == kFail) return ShareStatus(comm_, leader_status);
    if (action == kRedo) {
      // The same global batch again, split among the ranks that are left.
      status = SwitchPlan();
      if (!status.ok()) return status;
      progress_.Start();
      continue;
    }
    if (!delayed() && active_.size() > 1) {
      status = comm_.Broadcast(model_.grad_and_loss.data_ptr(), model_.grad_and_loss.nbytes(), 0);
      if (!status.ok()) return status;
    }
    if (!delayed()) {
      last_loss = model_.loss_slot() / batch_size;
      torch::NoGradGuard no_grad;
      at::Tensor grad = model_.grad();
      optimizer_->SetLr(ScheduledLr(train, step_, schedule_steps_));
      optimizer_->Step(model_.params, grad);
    }
    ++step_;
    TickProgress();
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
            {"samples_per_s", window_samples / std::max(1e-9, SecondsSince(window_start))},
            {"wan_bytes_sent", WanBytesSent()},
            {"generation", generation_}});
      window_start = Clock::now();
      window_samples = 0;
    }
    if (train.eval_every_steps() != 0 && step_ % train.eval_every_steps() == 0 &&
        step_ != total_steps) {
      absl::StatusOr<std::optional<std::pair<double, double>>> eval =
          Evaluate(RoundOf(step_ - 1, kEvalRound), /*may_skip=*/true);
      if (!eval.ok()) return eval.status();
      if (eval->has_value()) {
        Emit({{"event", "eval"},
              {"step", step_},
              {"test_accuracy", (*eval)->first},
              {"test_loss", (*eval)->second},
              {"eval_s", last_eval_seconds_}});
      } else {
        Emit({{"event", "warning"},
              {"message", absl::StrFormat("evaluation at step %d skipped: a pool was lost during "
                                          "it (the next one is due at step %d)",
                                          step_, step_ + train.eval_every_steps())}});
      }
    }
    if (action == kStop) {
      stopped_ = true;
      break;
    }
    const uint32_t digest_every = spec_.exchange().digest_every_steps();
    // Delayed mode checks on the exchange thread, where the link is. The
    // check is among the pools that computed this step, before a pool that
    // joins now (it starts with the next step) is on the link.
    if (comm_.rank() == 0 && link_ != nullptr && !delayed() && digest_every != 0 &&
        step_ % digest_every == 0) {
      status = CheckCloudsAgree(RoundOf(step_ - 1, kDigestRound), step_);
      // A peer lost during the check: the plan changes before the next step.
      if (!status.ok() && !(absl::IsAborted(status) && pending_plan_.has_value())) return status;
    }
    if (action == kReplanAfter) {
      status = SwitchPlan();
      if (!status.ok()) return status;
      progress_.Start();
    }
    if (spec_.checkpoint().every_steps() != 0 && step_ % spec_.checkpoint().every_steps() == 0) {
      // A checkpoint holds a state with nothing in flight, so that a resume
      // continues as this run does: drain (the next step starts fresh).
      const Clock::time_point drain_start = Clock::now();
      status = ApplyInFlight(&last_loss);
      if (!status.ok()) return status;
      train_seconds += SecondsSince(drain_start);
      SaveCheckpoint();
      TickProgress();
    }
    if (comm_.rank() == 0) ReportSaves(/*wait=*/false);
  }
  {
    // The last step's gradient is applied too (delayed mode's flush).
    WaitForCheckpointCopy();
    const Clock::time_point flush_start = Clock::now();
    status = ApplyInFlight(&last_loss);
    if (!status.ok()) return status;
    train_seconds += SecondsSince(flush_start);
  }
  if (stopped_) {
    // The coordinator moves the job elsewhere (or no longer needs this pool):
    // leave the state in the store if asked, and end without a "done".
    if (comm_.rank() == 0) {
      if (pending_plan_->checkpoint_before_stop()) {
        SaveCheckpoint();
        ReportSaves(/*wait=*/true);
      }
      Emit({{"event", "stopped"}, {"step", step_}, {"reason", pending_plan_->reason()}});
    }
    return absl::OkStatus();
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

  // The last step's slot of rounds may be used up (its digest check): the
  // end uses the slot of the step that would come next.
  absl::StatusOr<std::optional<std::pair<double, double>>> eval =
      Evaluate(RoundOf(step_, kEvalRound), /*may_skip=*/false);
  if (!eval.ok()) return eval.status();
  test_accuracy = (*eval)->first;
  test_loss = (*eval)->second;
  Emit({{"event", "eval"},
        {"step", step_},
        {"test_accuracy", test_accuracy},
        {"test_loss", test_loss},
        {"eval_s", last_eval_seconds_}});

  SaveCheckpoint();
  if (comm_.rank() == 0) ReportSaves(/*wait=*/true);
  TickProgress();
  const std::string digest = StateDigest(Views(StateTensors(model_, *optimizer_)));
  status = CheckReplicasAgree(digest);
  if (!status.ok()) return status;
  uint64_t wan_bytes_sent = 0;
  if (link_ != nullptr) {
    // The slot of the step that would come next, after the evaluation's.
    status = CheckCloudsAgree(RoundOf(step_, kDigestRound), step_);
    if (absl::IsAborted(status) && pending_plan_.has_value()) {
      Emit({{"event", "warning"},
            {"message",
             "a peer was lost after the last step: the final digest check between "
             "clouds was skipped"}});
    } else if (!status.ok()) {
      return status;
    }
  }
  if (comm_.rank() == 0) wan_bytes_sent = WanBytesSent();

  Emit({{"event", "done"},
        {"steps", step_},
        {"epochs", static_cast<double>(cursor_) / train_.count},
        {"cursor", cursor_},
        {"loss", last_loss},
        {"test_accuracy", test_accuracy},
        {"test_loss", test_loss},
        {"samples_per_s", trained_samples / std::max(1e-9, train_seconds)},
        {"worker_wall_s", SecondsSince(run_start)},
        {"state_digest", digest},
        {"wan_bytes_sent", wan_bytes_sent},
        {"compression_ratio",
         wan_bytes_sent == 0 ? 0.0 : static_cast<double>(fp32_bytes_exchanged_) / wan_bytes_sent}});
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
