#include "infra/wan_proxy/wan_proxy.h"

#include <algorithm>
#include <boost/asio.hpp>
#include <cmath>
#include <deque>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace tandem::infra {

const char kControlHelp[] =
    "commands: partition on|off, reset, delay MS, rate MBIT (0 = unlimited), loss P (per MB), "
    "stats, help";

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

constexpr size_t kReadChunk = size_t{64} << 10;
// Under a rate limit a write is at most this big, so one write cannot run far
// ahead of the bucket.
constexpr size_t kRateLimitedWrite = size_t{16} << 10;
constexpr double kBucketBurstBytes = 32 << 10;
constexpr size_t kMaxControlLine = 1024;
constexpr int64_t kMaxDelayMs = 600'000;
constexpr double kBytesPerMb = 1e6;

struct HostPort {
  std::string host;
  std::string port;
};

absl::StatusOr<HostPort> SplitHostPort(absl::string_view flag, const std::string& value,
                                       bool port_zero_ok) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", value, "': ", why, " (expected HOST:PORT, e.g. 127.0.0.1:7000)"));
  };
  HostPort out;
  size_t colon;
  if (!value.empty() && value[0] == '[') {
    size_t close = value.find(']');
    if (close == std::string::npos || close + 1 >= value.size() || value[close + 1] != ':') {
      return bad("unterminated [IPv6] address or missing port");
    }
    out.host = value.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = value.rfind(':');
    if (colon == std::string::npos) return bad("missing port");
    out.host = value.substr(0, colon);
    if (out.host.find(':') != std::string::npos) return bad("write IPv6 addresses as [ADDR]");
  }
  if (out.host.empty()) return bad("missing host");
  out.port = value.substr(colon + 1);
  uint32_t port = 0;
  if (out.port.empty() || !std::all_of(out.port.begin(), out.port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(out.port, &port) || port > 65535) {
    return bad("port must be a number from 0 to 65535");
  }
  if (port == 0 && !port_zero_ok) return bad("port 0 is only allowed for listening");
  return out;
}

std::string FormatEndpoint(const tcp::endpoint& endpoint) {
  std::string host = endpoint.address().to_string();
  if (endpoint.address().is_v6()) host = absl::StrCat("[", host, "]");
  return absl::StrCat(host, ":", endpoint.port());
}

// Bytes per second with a small burst. Tokens may go negative: a write takes
// what it needs once the balance is positive, and the next waits off the debt.
class TokenBucket {
 public:
  void SetRateMbit(double rate_mbit) {
    Refill(Clock::now());
    bytes_per_s_ = rate_mbit * 1e6 / 8;
  }
  bool unlimited() const { return bytes_per_s_ <= 0; }
  // How long until the next write may start.
  Clock::duration Wait(Clock::time_point now) {
    Refill(now);
    if (tokens_ > 0) return Clock::duration::zero();
    return std::chrono::duration_cast<Clock::duration>(
               std::chrono::duration<double>(-tokens_ / bytes_per_s_)) +
           Clock::duration(1);
  }
  void Take(size_t bytes) { tokens_ -= static_cast<double>(bytes); }

 private:
  void Refill(Clock::time_point now) {
    double seconds = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    if (unlimited()) {
      tokens_ = kBucketBurstBytes;
    } else {
      tokens_ = std::min(kBucketBurstBytes, tokens_ + bytes_per_s_ * seconds);
    }
  }

  double bytes_per_s_ = 0;
  double tokens_ = kBucketBurstBytes;
  Clock::time_point last_ = Clock::now();
};

struct Direction {
  WanDirectionStats stats;
  TokenBucket bucket;
};

class Connection;

absl::Status Stopped() { return absl::FailedPreconditionError("the WAN proxy is stopped"); }

// All of the proxy; WanProxy::Impl is this under the header's name.
class Core {
 public:
  explicit Core(const WanProxyOptions& options)
      : work_(asio::make_work_guard(io_)),
        delay_(options.delay),
        buffer_bytes_(options.buffer_bytes),
        loss_per_mb_(options.loss_per_mb),
        rate_mbit_(options.rate_mbit),
        rng_(options.seed) {
    c2t_.bucket.SetRateMbit(rate_mbit_);
    t2c_.bucket.SetRateMbit(rate_mbit_);
  }

  absl::Status Bind(const WanProxyOptions& options);
  void StartThread() {
    thread_ = std::thread([this] { io_.run(); });
  }

  // Runs `f` on the io thread and returns its result; nullopt once stopped.
  template <typename F>
  auto OnIo(F f) -> std::optional<decltype(f())> {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return std::nullopt;
    // Shared with the handler, which may still be returning from the task
    // when get() wakes up here.
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto result = task->get_future();
    asio::post(io_, [task] { (*task)(); });
    return result.get();
  }

  // Marks stopped (so OnIo refuses), shuts down on the io thread and joins it.
  void Stop();

  // The rest runs on the io thread only.
  void SetPartitioned(bool on);
  int ResetConnections();
  void SetDelay(std::chrono::milliseconds delay) { delay_ = delay; }
  void SetRateMbit(double rate_mbit);
  void SetLossPerMb(double loss_per_mb) { loss_per_mb_ = loss_per_mb; }
  WanProxyStats Stats() const;
  std::string HandleCommand(std::string line);

  bool ShouldReset(size_t bytes) {
    if (loss_per_mb_ <= 0) return false;
    double p = 1 - std::pow(1 - loss_per_mb_, static_cast<double>(bytes) / kBytesPerMb);
    return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  tcp::acceptor acceptor_{io_};
  tcp::acceptor control_{io_};
  asio::steady_timer accept_retry_{io_};
  std::vector<tcp::endpoint> target_;

  std::chrono::milliseconds delay_;
  const size_t buffer_bytes_;
  double loss_per_mb_;
  double rate_mbit_;
  bool partitioned_ = false;
  std::mt19937_64 rng_;
  Direction c2t_;
  Direction t2c_;
  std::unordered_set<std::shared_ptr<Connection>> connections_;
  std::unordered_set<std::shared_ptr<tcp::socket>> control_sessions_;
  uint64_t connections_total_ = 0;
  uint64_t resets_ = 0;

 private:
  void Accept();
  void AcceptControl();
  void ServeControl(std::shared_ptr<tcp::socket> socket, std::shared_ptr<asio::streambuf> in);
  void Shutdown();

  std::thread thread_;
  std::mutex mu_;
  bool stopped_ = false;  // guarded by mu_
};

// One direction of one connection: reads from `src` into a queue of
// timestamped chunks, writes them to `dst` once their release time has come
// and the direction's bucket allows.
class Pipe {
 public:
  Pipe(Connection* connection, Core* proxy, tcp::socket* src, tcp::socket* dst,
       Direction* direction)
      : connection_(connection),
        proxy_(proxy),
        src_(src),
        dst_(dst),
        direction_(direction),
        timer_(proxy->io_),
        read_buffer_(kReadChunk) {}

  void Start() {
    Read();
    Pump();
  }
  // Re-evaluates after a setting changed: a timer armed for the old setting
  // is cancelled, and its handler pumps again.
  void Kick() {
    if (timer_armed_) timer_.cancel();
    Read();
    Pump();
  }
  // Drops the queue (the connection is gone).
  void Clear() {
    timer_.cancel();
    direction_->stats.queued -= queued_;
    queued_ = 0;
    queue_.clear();
  }
  bool finished() const { return shutdown_sent_; }

 private:
  struct Chunk {
    Clock::time_point release_at;
    std::vector<char> data;
    size_t offset = 0;
  };

  void Read();
  void OnRead(const error_code& error, size_t bytes);
  void Pump();
  void OnWrite(const error_code& error, size_t bytes);

  Connection* const connection_;  // owns this Pipe
  Core* const proxy_;
  tcp::socket* const src_;
  tcp::socket* const dst_;
  Direction* const direction_;
  asio::steady_timer timer_;
  std::vector<char> read_buffer_;
  std::deque<Chunk> queue_;
  size_t queued_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool timer_armed_ = false;
  bool src_eof_ = false;
  bool shutdown_sent_ = false;
};

// A client connection and its connection to the target. Handlers hold a
// shared_ptr to it; the proxy's set holds it while it is open.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Core* proxy, tcp::socket client)
      : proxy_(proxy),
        client_(std::move(client)),
        upstream_(proxy->io_),
        c2t_(this, proxy, &client_, &upstream_, &proxy->c2t_),
        t2c_(this, proxy, &upstream_, &client_, &proxy->t2c_) {}

  void Open() {
    error_code ignored;
    client_.set_option(tcp::no_delay(true), ignored);
    if (proxy_->partitioned_) {
      state_ = State::kWaiting;  // the SYN is "lost" until the partition ends
      return;
    }
    Connect();
  }

  void OnPartitionEnd() {
    if (state_ == State::kWaiting) {
      Connect();
    } else {
      Kick();
    }
  }

  void Kick() {
    if (state_ != State::kOpen) return;
    c2t_.Kick();
    t2c_.Kick();
  }

  // RST to both sides.
  void Abort() {
    if (closed()) return;
    ++proxy_->resets_;
    error_code ignored;
    for (tcp::socket* socket : {&client_, &upstream_}) {
      if (!socket->is_open()) continue;
      socket->set_option(asio::socket_base::linger(true, 0), ignored);
      socket->close(ignored);
    }
    Release();
  }

  // Both directions have delivered everything and passed the EOF on.
  void MaybeFinish() {
    if (closed() || !c2t_.finished() || !t2c_.finished()) return;
    error_code ignored;
    client_.close(ignored);
    upstream_.close(ignored);
    Release();
  }

  bool closed() const { return state_ == State::kClosed; }
  Core* proxy() const { return proxy_; }

 private:
  enum class State { kWaiting, kConnecting, kOpen, kClosed };

  void Connect() {
    state_ = State::kConnecting;
    asio::async_connect(
        upstream_, proxy_->target_,
        [this, self = shared_from_this()](const error_code& error, const tcp::endpoint&) {
          if (closed()) return;
          if (error) {
            Abort();  // the client sees a reset, as for a refused connect
            return;
          }
          state_ = State::kOpen;
          error_code ignored;
          upstream_.set_option(tcp::no_delay(true), ignored);
          c2t_.Start();
          t2c_.Start();
        });
  }

  void Release() {
    state_ = State::kClosed;
    c2t_.Clear();
    t2c_.Clear();
    proxy_->connections_.erase(shared_from_this());
  }

  Core* const proxy_;
  tcp::socket client_;
  tcp::socket upstream_;
  Pipe c2t_;
  Pipe t2c_;
  State state_ = State::kConnecting;
};

void Pipe::Read() {
  if (reading_ || src_eof_ || connection_->closed()) return;
  size_t room = proxy_->buffer_bytes_ - queued_;
  if (room == 0) return;  // backpressure: the sender's socket fills up
  reading_ = true;
  src_->async_read_some(asio::buffer(read_buffer_.data(), std::min(room, read_buffer_.size())),
                        [this, self = connection_->shared_from_this()](
                            const error_code& error, size_t bytes) { OnRead(error, bytes); });
}

void Pipe::OnRead(const error_code& error, size_t bytes) {
  reading_ = false;
  if (connection_->closed()) return;
  if (bytes > 0) {
    queue_.push_back(Chunk{Clock::now() + proxy_->delay_,
                           std::vector<char>(read_buffer_.begin(), read_buffer_.begin() + bytes)});
    queued_ += bytes;
    direction_->stats.queued += bytes;
    direction_->stats.max_queued = std::max<uint64_t>(direction_->stats.max_queued, queued_);
    if (proxy_->ShouldReset(bytes)) {
      connection_->Abort();
      return;
    }
  }
  if (error == asio::error::eof) {
    src_eof_ = true;
  } else if (error) {
    connection_->Abort();  // a reset on one side is passed on to the other
    return;
  }
  Read();
  Pump();
}

void Pipe::Pump() {
  if (writing_ || timer_armed_ || connection_->closed() || proxy_->partitioned_) return;
  if (queue_.empty()) {
    if (src_eof_ && !shutdown_sent_) {
      shutdown_sent_ = true;
      error_code ignored;
      dst_->shutdown(tcp::socket::shutdown_send, ignored);
      connection_->MaybeFinish();
    }
    return;
  }
  Chunk& chunk = queue_.front();
  Clock::time_point now = Clock::now();
  Clock::duration wait = std::max(Clock::duration::zero(), chunk.release_at - now);
  size_t bytes = chunk.data.size() - chunk.offset;
  bool limited = !direction_->bucket.unlimited();
  if (wait == Clock::duration::zero() && limited) {
    wait = direction_->bucket.Wait(now);
    bytes = std::min(bytes, kRateLimitedWrite);
  }
  if (wait > Clock::duration::zero()) {
    timer_armed_ = true;
    timer_.expires_after(wait);
    timer_.async_wait([this, self = connection_->shared_from_this()](const error_code&) {
      timer_armed_ = false;
      Pump();
    });
    return;
  }
  if (limited) direction_->bucket.Take(bytes);
  writing_ = true;
  asio::async_write(*dst_, asio::buffer(chunk.data.data() + chunk.offset, bytes),
                    [this, self = connection_->shared_from_this()](
                        const error_code& error, size_t written) { OnWrite(error, written); });
}

void Pipe::OnWrite(const error_code& error, size_t bytes) {
  writing_ = false;
  if (connection_->closed()) return;
  if (error) {
    connection_->Abort();
    return;
  }
  Chunk& chunk = queue_.front();
  chunk.offset += bytes;
  if (chunk.offset == chunk.data.size()) queue_.pop_front();
  queued_ -= bytes;
  direction_->stats.queued -= bytes;
  direction_->stats.bytes += bytes;
  Pump();
  Read();
}

absl::Status Core::Bind(const WanProxyOptions& options) {
  tcp::resolver resolver(io_);
  error_code error;

  absl::StatusOr<HostPort> target = SplitHostPort("--target", options.target, false);
  if (!target.ok()) return target.status();
  auto targets = resolver.resolve(target->host, target->port, error);
  if (error || targets.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--target '", options.target, "': cannot resolve: ", error.message()));
  }
  for (const auto& entry : targets) target_.push_back(entry.endpoint());

  auto listen_on = [&](absl::string_view flag, const std::string& value, tcp::acceptor& acceptor,
                       bool loopback_only) -> absl::Status {
    absl::StatusOr<HostPort> where = SplitHostPort(flag, value, true);
    if (!where.ok()) return where.status();
    auto endpoints = resolver.resolve(where->host, where->port, tcp::resolver::passive, error);
    if (error || endpoints.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " '", value, "': cannot resolve: ", error.message()));
    }
    tcp::endpoint endpoint = endpoints.begin()->endpoint();
    if (loopback_only && !endpoint.address().is_loopback()) {
      return absl::InvalidArgumentError(absl::StrCat(
          flag, " '", value, "': the control socket is unauthenticated; use a loopback address"));
    }
    acceptor.open(endpoint.protocol(), error);
    if (!error) acceptor.set_option(tcp::acceptor::reuse_address(true), error);
    if (!error) acceptor.bind(endpoint, error);
    if (!error) acceptor.listen(asio::socket_base::max_listen_connections, error);
    if (error) {
      return absl::UnavailableError(
          absl::StrCat(flag, " '", value, "': cannot listen: ", error.message()));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = listen_on("--listen", options.listen, acceptor_, false); !s.ok()) return s;
  if (!options.control.empty()) {
    if (absl::Status s = listen_on("--control", options.control, control_, true); !s.ok()) {
      return s;
    }
    AcceptControl();
  }
  Accept();
  return absl::OkStatus();
}

void Core::Accept() {
  acceptor_.async_accept([this](const error_code& error, tcp::socket socket) {
    if (!acceptor_.is_open()) return;
    if (error) {
      // Out of file descriptors and the like: try again shortly rather than spin.
      accept_retry_.expires_after(std::chrono::milliseconds(100));
      accept_retry_.async_wait([this](const error_code& e) {
        if (!e) Accept();
      });
      return;
    }
    auto connection = std::make_shared<Connection>(this, std::move(socket));
    connections_.insert(connection);
    ++connections_total_;
    connection->Open();
    Accept();
  });
}

void Core::AcceptControl() {
  control_.async_accept([this](const error_code& error, tcp::socket socket) {
    if (!control_.is_open()) return;
    if (!error) {
      auto session = std::make_shared<tcp::socket>(std::move(socket));
      control_sessions_.insert(session);
      ServeControl(session, std::make_shared<asio::streambuf>(kMaxControlLine));
    }
    AcceptControl();
  });
}

void Core::ServeControl(std::shared_ptr<tcp::socket> socket, std::shared_ptr<asio::streambuf> in) {
  asio::async_read_until(
      *socket, *in, '\n', [this, socket, in](const error_code& error, size_t bytes) {
        std::string reply;
        bool last = false;
        if (!error) {
          std::string line(asio::buffers_begin(in->data()),
                           asio::buffers_begin(in->data()) + bytes);
          in->consume(bytes);
          reply = HandleCommand(line);
        } else if (error == asio::error::eof && in->size() > 0) {
          // A last command without a newline, as `printf stats | nc` sends.
          reply = HandleCommand(
              std::string(asio::buffers_begin(in->data()), asio::buffers_end(in->data())));
          last = true;
        } else if (error == asio::error::not_found) {
          reply = absl::StrCat("error line longer than ", kMaxControlLine, " bytes");
          last = true;
        } else {
          control_sessions_.erase(socket);
          return;
        }
        auto out = std::make_shared<std::string>(reply + "\n");
        asio::async_write(*socket, asio::buffer(*out),
                          [this, socket, in, out, last](const error_code& e, size_t) {
                            if (e || last) {
                              error_code ignored;
                              socket->close(ignored);
                              control_sessions_.erase(socket);
                              return;
                            }
                            ServeControl(socket, in);
                          });
      });
}

std::string Core::HandleCommand(std::string line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  std::vector<absl::string_view> words =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (words.empty()) return "error empty command; try help";
  absl::string_view command = words[0];
  auto arg = [&]() -> absl::string_view { return words.size() == 2 ? words[1] : ""; };
  if (command == "stats" && words.size() == 1) return StatsToJson(Stats());
  if (command == "help" && words.size() == 1) return kControlHelp;
  if (command == "reset" && words.size() == 1) return absl::StrCat("ok ", ResetConnections());
  if (command == "partition") {
    if (arg() == "on" || arg() == "off") {
      SetPartitioned(arg() == "on");
      return "ok";
    }
    return "error usage: partition on|off";
  }
  if (command == "delay") {
    int64_t ms = 0;
    if (!absl::SimpleAtoi(arg(), &ms) || ms < 0 || ms > kMaxDelayMs) {
      return absl::StrCat("error usage: delay MS, MS an integer from 0 to ", kMaxDelayMs);
    }
    SetDelay(std::chrono::milliseconds(ms));
    return "ok";
  }
  if (command == "rate") {
    double mbit = 0;
    if (!absl::SimpleAtod(arg(), &mbit) || !std::isfinite(mbit) || mbit < 0) {
      return "error usage: rate MBIT, MBIT >= 0 (0 = unlimited)";
    }
    SetRateMbit(mbit);
    return "ok";
  }
  if (command == "loss") {
    double p = 0;
    if (!absl::SimpleAtod(arg(), &p) || !(p >= 0 && p <= 1)) {
      return "error usage: loss P, P from 0 to 1 (reset probability per MB)";
    }
    SetLossPerMb(p);
    return "ok";
  }
  return absl::StrCat("error unknown command '", line, "'; ", kControlHelp);
}

void Core::SetPartitioned(bool on) {
  partitioned_ = on;
  if (on) return;  // pumps check the flag before every write
  std::vector<std::shared_ptr<Connection>> all(connections_.begin(), connections_.end());
  for (const auto& connection : all) connection->OnPartitionEnd();
}

int Core::ResetConnections() {
  std::vector<std::shared_ptr<Connection>> all(connections_.begin(), connections_.end());
  for (const auto& connection : all) connection->Abort();
  return static_cast<int>(all.size());
}

void Core::SetRateMbit(double rate_mbit) {
  rate_mbit_ = rate_mbit;
  c2t_.bucket.SetRateMbit(rate_mbit);
  t2c_.bucket.SetRateMbit(rate_mbit);
  std::vector<std::shared_ptr<Connection>> all(connections_.begin(), connections_.end());
  for (const auto& connection : all) connection->Kick();
}

WanProxyStats Core::Stats() const {
  WanProxyStats stats;
  stats.client_to_target = c2t_.stats;
  stats.target_to_client = t2c_.stats;
  stats.connections_active = connections_.size();
  stats.connections_total = connections_total_;
  stats.resets = resets_;
  stats.partitioned = partitioned_;
  stats.delay_ms = delay_.count();
  stats.rate_mbit = rate_mbit_;
  stats.loss_per_mb = loss_per_mb_;
  stats.buffer_bytes = buffer_bytes_;
  return stats;
}

void Core::Shutdown() {
  error_code ignored;
  acceptor_.close(ignored);
  control_.close(ignored);
  accept_retry_.cancel();
  ResetConnections();
  for (const auto& socket : control_sessions_) socket->close(ignored);
  control_sessions_.clear();
  work_.reset();
}

void Core::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  if (!thread_.joinable()) return;
  auto task = std::make_shared<std::packaged_task<void()>>([this] { Shutdown(); });
  auto done = task->get_future();
  asio::post(io_, [task] { (*task)(); });
  done.get();
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace

class WanProxy::Impl : public Core {
 public:
  using Core::Core;
};

std::string StatsToJson(const WanProxyStats& stats) {
  auto direction = [](const WanDirectionStats& d) {
    return nlohmann::json{{"bytes", d.bytes}, {"queued", d.queued}, {"max_queued", d.max_queued}};
  };
  nlohmann::json j = {{"client_to_target", direction(stats.client_to_target)},
                      {"target_to_client", direction(stats.target_to_client)},
                      {"connections_active", stats.connections_active},
                      {"connections_total", stats.connections_total},
                      {"resets", stats.resets},
                      {"partitioned", stats.partitioned},
                      {"delay_ms", stats.delay_ms},
                      {"rate_mbit", stats.rate_mbit},
                      {"loss_per_mb", stats.loss_per_mb},
                      {"buffer_bytes", stats.buffer_bytes}};
  return j.dump();
}

absl::Status ValidateWanProxyOptions(const WanProxyOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("--target is required (HOST:PORT to forward to)");
  }
  if (absl::StatusOr<HostPort> s = SplitHostPort("--target", options.target, false); !s.ok()) {
    return s.status();
  }
  if (absl::StatusOr<HostPort> s = SplitHostPort("--listen", options.listen, true); !s.ok()) {
    return s.status();
  }
  if (!options.control.empty()) {
    if (absl::StatusOr<HostPort> s = SplitHostPort("--control", options.control, true); !s.ok()) {
      return s.status();
    }
  }
  if (options.delay.count() < 0 || options.delay.count() > kMaxDelayMs) {
    return absl::InvalidArgumentError(absl::StrCat("--delay-ms must be from 0 to ", kMaxDelayMs,
                                                   ", got ", options.delay.count()));
  }
  if (!std::isfinite(options.rate_mbit) || options.rate_mbit < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--rate-mbit must be >= 0 (0 = unlimited), got ", options.rate_mbit));
  }
  if (options.buffer_bytes == 0) {
    return absl::InvalidArgumentError("--buffer-bytes must be at least 1");
  }
  if (!(options.loss_per_mb >= 0 && options.loss_per_mb <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--loss must be from 0 to 1 (reset probability per MB), got ", options.loss_per_mb));
  }
  return absl::OkStatus();
}

WanProxy::WanProxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WanProxy::~WanProxy() { Stop(); }

absl::StatusOr<std::unique_ptr<WanProxy>> WanProxy::Start(const WanProxyOptions& options) {
  if (absl::Status s = ValidateWanProxyOptions(options); !s.ok()) return s;
  auto impl = std::make_unique<Impl>(options);
  if (absl::Status s = impl->Bind(options); !s.ok()) return s;
  std::unique_ptr<WanProxy> proxy(new WanProxy(std::move(impl)));
  error_code ignored;
  tcp::endpoint listen = proxy->impl_->acceptor_.local_endpoint(ignored);
  proxy->listen_address_ = FormatEndpoint(listen);
  proxy->listen_port_ = listen.port();
  if (proxy->impl_->control_.is_open()) {
    tcp::endpoint control = proxy->impl_->control_.local_endpoint(ignored);
    proxy->control_address_ = FormatEndpoint(control);
    proxy->control_port_ = control.port();
  }
  proxy->impl_->StartThread();
  return proxy;
}

void WanProxy::Stop() { impl_->Stop(); }

absl::Status WanProxy::SetPartitioned(bool on) {
  if (!impl_->OnIo([&] {
        impl_->SetPartitioned(on);
        return true;
      }))
    return Stopped();
  return absl::OkStatus();
}

absl::StatusOr<int> WanProxy::ResetConnections() {
  std::optional<int> reset = impl_->OnIo([&] { return impl_->ResetConnections(); });
  if (!reset) return Stopped();
  return *reset;
}

absl::Status WanProxy::SetDelay(std::chrono::milliseconds delay) {
  if (delay.count() < 0 || delay.count() > kMaxDelayMs) {
    return absl::InvalidArgumentError(absl::StrCat("delay must be from 0 to ", kMaxDelayMs, " ms"));
  }
  if (!impl_->OnIo([&] {
        impl_->SetDelay(delay);
        return true;
      }))
    return Stopped();
  return absl::OkStatus();
}

absl::Status WanProxy::SetRateMbit(double rate_mbit) {
  if (!std::isfinite(rate_mbit) || rate_mbit < 0) {
    return absl::InvalidArgumentError("rate must be >= 0 Mbit/s (0 = unlimited)");
  }
  if (!impl_->OnIo([&] {
        impl_->SetRateMbit(rate_mbit);
        return true;
      }))
    return Stopped();
  return absl::OkStatus();
}

absl::Status WanProxy::SetLossPerMb(double loss_per_mb) {
  if (!(loss_per_mb >= 0 && loss_per_mb <= 1)) {
    return absl::InvalidArgumentError("loss must be from 0 to 1 (reset probability per MB)");
  }
  if (!impl_->OnIo([&] {
        impl_->SetLossPerMb(loss_per_mb);
        return true;
      }))
    return Stopped();
  return absl::OkStatus();
}

WanProxyStats WanProxy::Stats() {
  return impl_->OnIo([&] { return impl_->Stats(); }).value_or(WanProxyStats{});
}

}  // namespace tandem::infra
