#include "coordinator/local_train.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/subprocess.h"
#include "worker/worker_events.h"

namespace tandem {
namespace {

using Json = nlohmann::json;

template <typename T>
T Field(const Json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

}  // namespace

std::optional<WorkerEvent> ParseWorkerEvent(const std::string& line) {
  const std::string prefix = kEventPrefix;
  if (line.rfind(prefix, 0) != 0) return std::nullopt;
  Json j = Json::parse(line.substr(prefix.size()), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("event")) return std::nullopt;
  WorkerEvent event;
  event.kind = Field<std::string>(j, "event", "");
  event.message = Field<std::string>(j, "message", "");
  v1::TrainingProgress& p = event.progress;
  p.set_step(Field<uint64_t>(j, "step", Field<uint64_t>(j, "steps", 0)));
  p.set_total_steps(Field<uint64_t>(j, "total_steps", 0));
  p.set_epoch(Field<uint32_t>(j, "epoch", 0));
  p.set_global_cursor(Field<uint64_t>(j, "cursor", 0));
  p.set_loss(Field<double>(j, "loss", 0));
  p.set_samples_per_s(Field<double>(j, "samples_per_s", 0));
  p.set_test_accuracy(Field<double>(j, "test_accuracy", -1));
  p.set_test_loss(Field<double>(j, "test_loss", -1));
  p.set_state_digest(Field<std::string>(j, "state_digest", ""));
  p.set_wan_bytes_sent(Field<uint64_t>(j, "wan_bytes_sent", 0));
  p.set_compression_ratio(Field<double>(j, "compression_ratio", 0));
  event.epochs = Field<double>(j, "epochs", 0);
  event.init_digest = Field<std::string>(j, "init_digest", "");
  event.eval_s = Field<double>(j, "eval_s", 0);
  if (event.kind == "start") p.set_step(Field<uint64_t>(j, "start_step", 0));
  return event;
}

std::vector<std::string> MpirunArgv(int ranks, const std::vector<std::string>& worker_argv) {
  std::vector<std::string> argv = {
      "mpirun", "-np", std::to_string(ranks), "--quiet",
      // Ranks may outnumber cores; pinning them would stack them on one core.
      "--oversubscribe", "--bind-to", "none",
      // Cross-memory attach needs ptrace rights that containers often deny.
      "--mca", "btl_vader_single_copy_mechanism", "none"};
  argv.insert(argv.end(), worker_argv.begin(), worker_argv.end());
  return argv;
}

std::vector<std::pair<std::string, std::string>> MpirunEnv() {
  std::vector<std::pair<std::string, std::string>> env = {{"OMP_NUM_THREADS", "1"}};
  if (geteuid() == 0) {
    env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT", "1");
    env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
  }
  return env;
}

namespace {

// A port on 127.0.0.1 that nothing listens on right now. Another process
// could take it before our child binds it; the child then fails to listen and
// says so, which is rare enough on a test machine to accept.
absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("bind 127.0.0.1:0: ", std::strerror(errno)));
  }
  close(fd);
  return ntohs(address.sin_port);
}

// Lines from several children, read on one thread each and handed to the
// caller's thread in arrival order.
class LineQueue {
 public:
  struct Line {
    int source;
    std::optional<std::string> text;  // nullopt: the source's stream ended
  };

  void Push(Line line) {
    absl::MutexLock lock(&mu_);
    lines_.push_back(std::move(line));
  }

  // The next line; nullopt if none came before `deadline`.
  std::optional<Line> Pop(absl::Time deadline) {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(
            absl::Condition(
                +[](std::deque<Line>* lines) { return !lines->empty(); }, &lines_),
            deadline)) {
      return std::nullopt;
    }
    Line line = std::move(lines_.front());
    lines_.pop_front();
    return line;
  }

 private:
  absl::Mutex mu_;
  std::deque<Line> lines_ ABSL_GUARDED_BY(mu_);
};

// Starts the WAN proxy in front of `target_port`; returns it and its port.
absl::StatusOr<std::pair<std::unique_ptr<Subprocess>, int>> StartWanProxy(
    const LocalTrainOptions& options, int target_port) {
  const std::string binary =
      (std::filesystem::path(options.tandem_binary).parent_path() / "tandem-wan-proxy").string();
  std::vector<std::string> argv = {binary, "--listen", "127.0.0.1:0", "--target",
                                   absl::StrCat("127.0.0.1:", target_port)};
  if (options.wan_delay_ms > 0) {
    argv.push_back("--delay-ms");
    argv.push_back(absl::StrCat(options.wan_delay_ms));
  }
  if (options.wan_rate_mbit > 0) {
    argv.push_back("--rate-mbit");
    argv.push_back(absl::StrCat(options.wan_rate_mbit));
  }
  if (options.wan_rate_mbit > 0 && options.wan_delay_ms > 0) {
    // The proxy holds at most this many bytes in flight per direction: twice
    // the bandwidth-delay product, so the rate and not the buffer limits.
    const double bdp = options.wan_rate_mbit * 1e6 / 8 * options.wan_delay_ms / 1000;
    argv.push_back("--buffer-bytes");
    argv.push_back(absl::StrCat(std::max<uint64_t>(4 << 20, static_cast<uint64_t>(2 * bdp))));
  }
  if (options.wan_loss > 0) {
    argv.push_back("--loss");
    argv.push_back(absl::StrCat(options.wan_loss));
  }
  absl::StatusOr<std::unique_ptr<Subprocess>> proxy = Subprocess::Start(argv);
  if (!proxy.ok()) return proxy.status();
  while (std::optional<std::string> line = (*proxy)->ReadLine()) {
    const std::string prefix = "listening on ";
    if (line->rfind(prefix, 0) != 0) continue;
    const size_t colon = line->rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(line->substr(colon + 1), &port)) break;
    return std::make_pair(std::move(*proxy), port);
  }
  return absl::InternalError("the WAN proxy exited before it listened");
}

}  // namespace

std::string PoolStoreDir(const LocalTrainOptions& options, const v1::JobSpec& spec, int pool) {
  if (spec.pools_size() == 1) return options.store_dir;
  return (std::filesystem::path(options.store_dir) / spec.pools(pool).cloud()).string();
}

namespace {

// What a pool's leader says when the port it was given is taken
// (trainer.cc's standby server, grpc_link.cc's exchange server).
bool IsListenFailure(const std::string& message) { return message.rfind("cannot listen", 0) == 0; }

// One try. `port_taken` is set when a leader could not listen on the port
// picked for it: another process took it between FreeLoopbackPort and the
// leader's bind, which a fresh try with other ports gets around.
absl::StatusOr<TrainResult> RunLocalTrainingOnce(
    const LocalTrainOptions& options, const v1::JobSpec& spec,
    const std::function<void(const WorkerEvent&)>& on_event, bool* port_taken) {
  *port_taken = false;
  const int pools = spec.pools_size();
  const auto start = std::chrono::steady_clock::now();

  // Every leader listens for its peers' gradient streams; with WAN emulation
  // the peers reach it through a proxy, so every byte between two clouds
  // crosses one.
  std::vector<std::string> peers;
  std::vector<int> listen_ports;
  std::vector<std::unique_ptr<Subprocess>> proxies;
  const bool emulate_wan =
      options.wan_delay_ms > 0 || options.wan_rate_mbit > 0 || options.wan_loss > 0;
  for (int i = 0; pools > 1 && i < pools; ++i) {
    absl::StatusOr<int> port = FreeLoopbackPort();
    if (!port.ok()) return port.status();
    listen_ports.push_back(*port);
    int reachable_at = *port;
    if (emulate_wan) {
      auto proxy = StartWanProxy(options, *port);
      if (!proxy.ok()) return proxy.status();
      proxies.push_back(std::move(proxy->first));
      reachable_at = proxy->second;
    }
    peers.push_back(absl::StrCat("127.0.0.1:", reachable_at));
  }

  std::vector<std::unique_ptr<Subprocess>> groups;
  for (int i = 0; i < pools; ++i) {
    std::vector<std::string> worker = {
        options.tandem_binary,          "worker", "--spec",         options.spec_path, "--store",
        PoolStoreDir(options, spec, i), "--pool", std::to_string(i)};
    if (options.resume) worker.push_back("--resume");
    if (!options.init_file.empty()) {
      worker.push_back("--init");
      worker.push_back(options.init_file);
    }
    if (options.max_steps != 0) {
      worker.push_back("--max-steps");
      worker.push_back(std::to_string(options.max_steps));
    }
    if (pools > 1) {
      worker.push_back("--link-listen");
      worker.push_back(absl::StrCat("127.0.0.1:", listen_ports[i]));
      worker.push_back("--link-peers");
      worker.push_back(absl::StrJoin(peers, ","));
      worker.push_back("--exchange-timeout-ms");
      worker.push_back(std::to_string(options.exchange_timeout_ms));
      worker.push_back("--liveness-ms");
      worker.push_back(std::to_string(options.liveness_ms));
      worker.push_back("--stuck-after-ms");
      worker.push_back(std::to_string(options.stuck_after_ms));
      if (options.eval_per_pool) worker.push_back("--eval-per-pool");
      if (options.insecure) {
        worker.push_back("--insecure");
      } else {
        worker.push_back("--certs");
        worker.push_back(options.certs_dir);
      }
    }
    absl::StatusOr<std::unique_ptr<Subprocess>> group = Subprocess::Start(
        MpirunArgv(static_cast<int>(spec.pools(i).workers()), worker), MpirunEnv());
    if (!group.ok()) return group.status();
    groups.push_back(std::move(*group));
  }

  LineQueue queue;
  std::vector<std::thread> readers;
  for (int i = 0; i < pools; ++i) {
    readers.emplace_back([&queue, &groups, i] {
      while (std::optional<std::string> line = groups[i]->ReadLine()) queue.Push({i, line});
      queue.Push({i, std::nullopt});
    });
  }

  std::optional<TrainResult> result;
  std::string error;
  std::string init_digest;
  std::vector<int> exit_codes(pools, -1);
  // Once a pool has failed, the others fail by themselves once their link
  // finds it dead; only if they have not by then (a hung pool, or one still
  // connecting) are they stopped.
  // (Signalling an mpirun that is already aborting can crash it.)
  absl::Time stop_others_at = absl::InfiniteFuture();
  for (int open = pools; open > 0;) {
    std::optional<LineQueue::Line> next = queue.Pop(stop_others_at);
    if (!next.has_value()) {
      for (auto& group : groups) group->Kill(SIGTERM);
      stop_others_at = absl::InfiniteFuture();
      continue;
    }
    LineQueue::Line& line = *next;
    const int pool = line.source;
    if (!line.text.has_value()) {
      --open;
      absl::StatusOr<int> exit_code = groups[pool]->Wait();
      exit_codes[pool] = exit_code.ok() ? *exit_code : 1;
      if (exit_codes[pool] != 0 && stop_others_at == absl::InfiniteFuture()) {
        stop_others_at =
            absl::Now() + absl::Milliseconds(options.liveness_ms) + absl::Seconds(10);
      }
      continue;
    }
    std::optional<WorkerEvent> event = ParseWorkerEvent(*line.text);
    if (!event.has_value()) {
      std::cout << *line.text << "\n";
      continue;
    }
    if (event->kind == "error") {
      if (IsListenFailure(event->message)) *port_taken = true;
      if (error.empty()) {
        error = pools > 1 ? absl::StrCat("pool ", spec.pools(pool).cloud(), ": ", event->message)
                          : event->message;
      }
      continue;
    }
    // The pools run in lockstep on identical state: pool 0 speaks for the job,
    // the others only for their own warnings.
    if (pool != 0) {
      if (event->kind == "warning") {
        event->message = absl::StrCat("pool ", spec.pools(pool).cloud(), ": ", event->message);
        on_event(*event);
      }
      continue;
    }
    on_event(*event);
    if (event->kind == "start") init_digest = event->init_digest;
    if (event->kind == "done") {
      const v1::TrainingProgress& p = event->progress;
      result = TrainResult{};
      result->steps = p.step();
      result->epochs = event->epochs;
      result->cursor = p.global_cursor();
      result->loss = p.loss();
      result->test_accuracy = p.test_accuracy();
      result->test_loss = p.test_loss();
      result->samples_per_s = p.samples_per_s();
      result->state_digest = p.state_digest();
      result->init_digest = init_digest;
      result->wan_bytes_sent = p.wan_bytes_sent();
      result->compression_ratio = p.compression_ratio();
    }
  }
  for (std::thread& reader : readers) reader.join();
  if (!error.empty()) return absl::AbortedError(error);
  for (int i = 0; i < pools; ++i) {
    if (exit_codes[i] != 0 || !result.has_value()) {
      return absl::AbortedError(
          absl::StrFormat("the worker group of pool %s exited with status %d before finishing",
                          spec.pools(i).cloud(), exit_codes[i]));
    }
  }
  result->wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return *result;
}

}  // namespace

absl::StatusOr<TrainResult> RunLocalTraining(
    const LocalTrainOptions& options, const v1::JobSpec& spec,
    const std::function<void(const WorkerEvent&)>& on_event) {
  constexpr int kTries = 3;
  for (int attempt = 1;; ++attempt) {
    bool port_taken = false;
    absl::StatusOr<TrainResult> result = RunLocalTrainingOnce(options, spec, on_event, &port_taken);
    if (result.ok() || !port_taken || attempt == kTries) return result;
    WorkerEvent warning;
    warning.kind = "warning";
    warning.message =
        absl::StrCat(result.status().message(),
                     " (another process took the port); starting again on other ports");
    on_event(warning);
  }
}

}  // namespace tandem
