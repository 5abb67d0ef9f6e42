#include <unistd.h>

#include <boost/program_options.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/progress_view.h"
#include "coordinator/local_train.h"
#include "transport/tls.h"
#include "worker/job_spec.h"
#include "worker/peer_wait.h"

namespace tandem::cli {

namespace po = boost::program_options;

std::string DefaultStoreDir() {
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home != '\0' ? home : ".") + "/.tandem/store";
}

std::string SelfExecutable() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? "tandem" : self.string();
}

std::string DefaultCertsDir() {
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home != '\0' ? home : ".") + "/.tandem/certs";
}

namespace {

constexpr char kTrainUsage[] = R"(Usage: tandem train SPEC [OPTIONS]

Runs the job described by the YAML file SPEC on this machine: each pool of the
spec is one group of `tandem worker` ranks that tandem starts with mpirun.
With several pools, their leaders exchange gradients (encoded with
exchange.codec) over gRPC with mutual TLS, through an emulated WAN when
--wan-delay/--wan-rate/--wan-loss are given. Checkpoints go to the store
(one store per cloud, DIR/CLOUD, when there are several pools) every
checkpoint.every_steps and at the end. On a terminal a live progress line
shows step, loss, samples/s and ETA.

Options)";

// One event of the job as a JSON object, with the fields its kind carries
// (worker/worker_events.h) and `t`, seconds since the job started.
nlohmann::json EventJson(const WorkerEvent& e, double t) {
  const v1::TrainingProgress& p = e.progress;
  nlohmann::json j = {{"event", e.kind}, {"t", t}};
  if (e.kind == "start") {
    j["start_step"] = p.step();
    j["total_steps"] = p.total_steps();
  } else if (e.kind == "progress") {
    j.update({{"step", p.step()},
              {"total_steps", p.total_steps()},
              {"epoch", p.epoch()},
              {"cursor", p.global_cursor()},
              {"loss", p.loss()},
              {"samples_per_s", p.samples_per_s()},
              {"wan_bytes_sent", p.wan_bytes_sent()}});
  } else if (e.kind == "eval") {
    j.update({{"step", p.step()},
              {"test_accuracy", p.test_accuracy()},
              {"test_loss", p.test_loss()},
              {"eval_s", e.eval_s}});
  } else if (e.kind == "checkpoint") {
    j.update({{"step", p.step()}, {"state_digest", p.state_digest()}});
  } else if (e.kind == "done") {
    j.update({{"step", p.step()},
              {"epochs", e.epochs},
              {"cursor", p.global_cursor()},
              {"loss", p.loss()},
              {"test_accuracy", p.test_accuracy()},
              {"test_loss", p.test_loss()},
              {"samples_per_s", p.samples_per_s()},
              {"state_digest", p.state_digest()},
              {"wan_bytes_sent", p.wan_bytes_sent()},
              {"compression_ratio", p.compression_ratio()}});
  } else {
    j["message"] = e.message;
  }
  return j;
}

}  // namespace

int TrainCommand(const std::vector<std::string>& args) {
  std::string spec_path;
  std::string store_dir;
  std::string output;
  bool resume = false;
  std::string init_file;
  uint64_t max_steps = 0;
  std::string certs_dir;
  bool insecure = false;
  uint32_t wan_delay_ms = 0;
  double wan_rate_mbit = 0;
  double wan_loss = 0;
  double exchange_timeout_s = 60;
  double liveness_s = 4;
  double stuck_after_s = 60;
  bool eval_per_pool = false;
  std::string events_file;
  po::options_description flags(kTrainUsage);
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("store", po::value(&store_dir)->default_value(DefaultStoreDir()),
       "checkpoint store folder (created if missing)")
      ("resume", po::bool_switch(&resume),
       "continue from the job's latest checkpoint in the store")
      ("init", po::value(&init_file)->value_name("FILE"),
       "start from the parameters in FILE, a PyTorch state_dict (parameter name -> tensor) "
       "as `tandem export` or Python's torch.save(model.state_dict()) writes it")
      ("max-steps", po::value(&max_steps)->default_value(0)->value_name("N"),
       "stop after N steps in all (0 = as the spec says)")
      ("certs", po::value(&certs_dir)->default_value(DefaultCertsDir()),
       "mutual TLS material for the links between pools (made there on first use)")
      ("insecure", po::bool_switch(&insecure), "plaintext links between pools instead of TLS")
      ("wan-delay", po::value(&wan_delay_ms)->default_value(0)->value_name("MS"),
       "emulate a WAN between the pools: one-way delay in milliseconds")
      ("wan-rate", po::value(&wan_rate_mbit)->default_value(0)->value_name("MBIT"),
       "emulated WAN rate in Mbit/s per direction (0 = unlimited)")
      ("wan-loss", po::value(&wan_loss)->default_value(0)->value_name("P"),
       "emulated WAN connection resets per MB sent (0 = none)")
      ("exchange-timeout", po::value(&exchange_timeout_s)->default_value(60)->value_name("S"),
       "fail the job when the pools cannot connect to each other within S seconds")
      ("liveness", po::value(&liveness_s)->default_value(4)->value_name("S"),
       "fail the job when the link hears nothing from a peer pool for S seconds")
      ("stuck-after", po::value(&stuck_after_s)->default_value(60)->value_name("S"),
       "fail the job when a peer pool is alive but makes no progress for S seconds (or 20 "
       "of its recent steps, if longer); a slow peer is waited for")
      ("eval-per-pool", po::bool_switch(&eval_per_pool),
       "each pool evaluates the whole test set itself instead of its share of it (the way "
       "tandem evaluated before the test set was sharded across pools; for comparisons)")
      ("events", po::value(&events_file)->value_name("FILE"),
       "append every event of the job (start, progress, eval, checkpoint, warning, done) "
       "to FILE as one JSON object per line")
      ("output", po::value(&output)->default_value("text"),
       "text, or json: the last line of stdout is one JSON object with steps, epochs, "
       "test_accuracy, test_loss, samples_per_s, wall_s and state_digest");
  // clang-format on
  po::options_description hidden;
  hidden.add_options()("spec", po::value(&spec_path));
  po::positional_options_description positional;
  positional.add("spec", 1);
  po::variables_map vm;
  bool help = false;
  if (!ParseFlags("train", args, flags, hidden, positional, vm, &help)) return kExitUsage;
  if (help) return kExitOk;
  if (spec_path.empty()) {
    std::cerr << "tandem train: missing SPEC (a job spec YAML file, e.g. "
                 "examples/fashion-mnist-cnn.yaml)\n";
    return kExitUsage;
  }
  if (!CheckOutputFormat("train", output)) return kExitUsage;
  if (resume && !init_file.empty()) {
    std::cerr << "tandem train: --init and --resume exclude each other: a resumed job "
                 "continues from its checkpoint\n";
    return kExitUsage;
  }
  absl::StatusOr<v1::JobSpec> spec = LoadJobSpec(spec_path);
  if (!spec.ok()) {
    std::cerr << "tandem train: " << spec.status().message() << "\n";
    return kExitUsage;
  }

  if (exchange_timeout_s <= 0 || liveness_s * 1000 < kMinLivenessMs ||
      stuck_after_s * 1000 < kMinLivenessMs || wan_rate_mbit < 0 || wan_loss < 0) {
    std::cerr << "tandem train: --exchange-timeout must be positive, --liveness and "
                 "--stuck-after at least 1 s (two of the link's heartbeat intervals), "
                 "--wan-rate and --wan-loss not negative\n";
    return kExitUsage;
  }
  if (spec->pools_size() > 1 && !insecure) {
    absl::Status certs = CreateCertificates(certs_dir, {"localhost", "127.0.0.1", "::1"});
    if (!certs.ok()) {
      std::cerr << "tandem train: " << certs.message() << "\n";
      return kExitFailed;
    }
  }
  LocalTrainOptions options;
  options.certs_dir = std::filesystem::absolute(certs_dir).string();
  options.insecure = insecure;
  options.wan_delay_ms = wan_delay_ms;
  options.wan_rate_mbit = wan_rate_mbit;
  options.wan_loss = wan_loss;
  options.exchange_timeout_ms = static_cast<uint32_t>(exchange_timeout_s * 1000);
  options.liveness_ms = static_cast<uint32_t>(liveness_s * 1000);
  options.stuck_after_ms = static_cast<uint32_t>(stuck_after_s * 1000);
  options.eval_per_pool = eval_per_pool;
  options.spec_path = std::filesystem::absolute(spec_path).string();
  options.store_dir = std::filesystem::absolute(store_dir).string();
  options.resume = resume;
  if (!init_file.empty()) options.init_file = std::filesystem::absolute(init_file).string();
  options.max_steps = max_steps;
  options.tandem_binary = SelfExecutable();
  std::error_code error;
  // A job of several pools keeps one store per cloud inside the folder.
  std::filesystem::create_directories(spec->pools_size() > 1
                                          ? std::filesystem::path(options.store_dir)
                                          : std::filesystem::path(options.store_dir).parent_path(),
                                      error);

  std::ofstream events;
  if (!events_file.empty()) {
    events.open(events_file, std::ios::app);
    if (!events) {
      std::cerr << "tandem train: cannot open --events file " << events_file << "\n";
      return kExitUsage;
    }
  }

  // Ctrl-C reaches mpirun too (same process group), which stops the ranks;
  // we stay alive to say where the job can resume from.
  std::signal(SIGINT, SIG_IGN);
  ProgressView view(std::cerr, isatty(STDERR_FILENO) != 0, output == "json",
                    spec->train().global_batch());
  const absl::Time start = absl::Now();
  absl::StatusOr<TrainResult> result = RunLocalTraining(options, *spec, [&](const WorkerEvent& e) {
    view.OnEvent(e);
    if (events.is_open()) {
      events << EventJson(e, absl::ToDoubleSeconds(absl::Now() - start)).dump() << std::endl;
    }
  });
  view.Finish();
  if (!result.ok()) {
    std::cerr << "tandem train: job " << spec->name() << " failed: " << result.status().message()
              << "\n";
    return kExitFailed;
  }
  if (output == "json") {
    nlohmann::json j = {{"job", spec->name()},
                        {"steps", result->steps},
                        {"epochs", result->epochs},
                        {"loss", result->loss},
                        {"test_accuracy", result->test_accuracy},
                        {"test_loss", result->test_loss},
                        {"samples_per_s", result->samples_per_s},
                        {"wall_s", result->wall_s},
                        {"state_digest", result->state_digest},
                        {"store", options.store_dir}};
    if (!result->init_digest.empty()) j["init_digest"] = result->init_digest;
    if (spec->pools_size() > 1) {
      j["wan_bytes_sent"] = result->wan_bytes_sent;
      j["compression_ratio"] = result->compression_ratio;
    }
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "job %s: %d steps (%.2f epochs) in %.1f s\n"
        "  test accuracy %.4f, test loss %.4f, last train loss %.4f\n"
        "  %.0f samples/s; state digest %s\n"
        "  checkpoints in %s (resume with --resume)\n",
        spec->name(), result->steps, result->epochs, result->wall_s, result->test_accuracy,
        result->test_loss, result->loss, result->samples_per_s, result->state_digest,
        options.store_dir);
    if (spec->pools_size() > 1) {
      std::cout << absl::StrFormat(
          "  WAN: %.1f MB sent by %s's leader, compression ratio %.1f (codec %s)\n",
          result->wan_bytes_sent / 1e6, spec->pools(0).cloud(), result->compression_ratio,
          CodecName(spec->exchange().codec()));
    }
  }
  return kExitOk;
}

}  // namespace tandem::cli
