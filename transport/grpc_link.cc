#include "transport/grpc_link.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tandem/v1/exchange.grpc.pb.h"
#include "transport/crc32c.h"
#include "transport/tls.h"

namespace tandem {
namespace {

using v1::ExchangeMessage;
using ClientStream = grpc::ClientReaderWriter<ExchangeMessage, ExchangeMessage>;
using ServerStream = grpc::ServerReaderWriter<ExchangeMessage, ExchangeMessage>;

absl::Duration ToAbsl(std::chrono::milliseconds d) { return absl::Milliseconds(d.count()); }

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                      ": ", status.error_message());
}

// Random and non-zero (zero is "none seen yet").
uint64_t NewSessionId() {
  std::random_device device;
  std::mt19937_64 rng((uint64_t{device()} << 32) ^ device() ^
                      static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())));
  uint64_t id = 0;
  while (id == 0) id = rng();
  return id;
}

int Ms(std::chrono::milliseconds d) {
  return static_cast<int>(std::min<int64_t>(d.count(), std::numeric_limits<int>::max()));
}

}  // namespace

class GrpcLink::Impl {
 public:
  explicit Impl(const GrpcLinkOptions& options) : options_(options), session_id_(NewSessionId()) {}
  ~Impl();

  absl::Status Start();
  int port() const { return port_; }
  const GrpcLinkOptions& options() const { return options_; }

  absl::Status SetPeers(const std::vector<std::string>& addresses);
  absl::Status Connect(std::chrono::milliseconds deadline);
  absl::StatusOr<std::vector<std::string>> Exchange(uint64_t round, absl::string_view payload,
                                                    std::chrono::milliseconds deadline);
  LinkStats Stats() const;
  std::vector<PeerHealth> Peers() const;
  void ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit);

 private:
  class Service;

  enum class FrameState { kQueued, kInFlight, kAcked };
  enum class Outcome { kWasUp, kFailed, kRefused };

  // One frame of the payload being sent to one peer.
  struct OutFrame {
    FrameState state = FrameState::kQueued;
    int slot = -1;      // the stream it is in flight on
    bool sent = false;  // handed to a stream before (a further write is a resend)
  };

  // One attempt at a sending stream: a call, and the thread that opens it and
  // reads its acks.
  struct Connection {
    grpc::ClientContext context;
    std::unique_ptr<ClientStream> stream;  // set by the connection thread
    bool handshaken = false;
    uint64_t session = 0;  // the peer's, from its answer
    bool done = false;     // the connection thread is ending
    std::string error;     // why it ended, where we know better than its status
  };

  // One of the sending streams to one peer, kept up by its own thread.
  struct Slot {
    Slot(int peer, int index) : peer(peer), index(index) {}
    const int peer;
    const int index;
    std::thread thread;
    std::shared_ptr<v1::GradientExchange::Stub> stub;  // null until the address is known
    uint64_t generation = 0;                           // bumped when the address changes
    std::deque<size_t> queue;                          // frames dealt to this stream
    int inflight = 0;                                  // frames written, not yet acked
    Connection* connection = nullptr;                  // the live attempt, for cancellation
    bool up = false;
    bool ever_up = false;
    absl::Time last_write;  // of the live connection: for heartbeats
    bool drop_acks = false;  // test hook: the stream was "cut"
  };

  struct Piece {
    uint64_t size = 0;
    bool acked = false;
  };

  // A round's payload coming in from one peer.
  struct InRound {
    uint64_t size = 0;
    std::string data;
    std::map<uint64_t, Piece> pieces;  // by offset
    uint64_t acked_bytes = 0;
    bool any_acked = false;
    bool complete() const { return any_acked && acked_bytes == size; }
  };

  struct Peer {
    explicit Peer(int index) : index(index) {}
    const int index;
    std::string address;
    std::string cloud;  // from its hellos
    std::vector<std::unique_ptr<Slot>> slots;
    // The outgoing round.
    std::vector<OutFrame> frames;
    size_t frames_acked = 0;
    std::deque<size_t> orphans;  // frames of broken streams, for any stream
    int streams_up = 0;
    std::string last_error;
    absl::Status refused_by_peer;  // our hello was refused, or its answer was wrong
    absl::Status refused_by_us;    // we refused its hello
    absl::Status rejected;         // it rejected a frame of the outgoing round
    // The peer's incarnation that the acks of `frames` and the payloads in
    // `in` came from; 0 until one is seen.
    uint64_t session = 0;
    std::map<uint64_t, InRound> in;  // by round
    // Liveness (PeerHealth): the last message of any kind from it, and the
    // progress its heartbeats reported.
    absl::Time last_heard;
    uint64_t progress = 0;
    uint32_t recent_unit_ms = 0;
    absl::Time progress_changed;
  };

  // Sending side.
  void RunSlot(Slot* slot);
  Outcome RunConnection(Slot* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteFrames(Slot* slot, Connection* connection, uint64_t generation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReadConnection(Slot* slot, Connection* connection,
                      std::shared_ptr<v1::GradientExchange::Stub> stub);
  std::string CheckAnswer(const Peer& peer, const ExchangeMessage& answer) const;
  void HandleAck(Slot* slot, const Connection& connection, const v1::ExchangeAck& ack)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasWork(Peer& peer, Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Requeue(Peer& peer, Slot& slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SeePeerSession(Peer& peer, uint64_t session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A message came from the peer; with a heartbeat, its progress too.
  void Heard(Peer& peer, const v1::ExchangeHeartbeat* heartbeat) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ExchangeMessage MakeHeartbeat() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int peer, int slot) const;
  absl::Duration Backoff(int failures) const;
  ExchangeMessage MakeHello(uint32_t stream_index) const;
  std::string Name(const Peer& peer) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Receiving side.
  grpc::Status Serve(ServerStream* stream);
  std::string CheckHello(const v1::ExchangeHello& hello) const;
  std::string Store(Peer& peer, uint64_t session, const v1::ExchangeFrame& frame, bool* count)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkAcked(Peer& peer, uint64_t round, uint64_t offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The caller's side.
  void StartRound(uint64_t round, absl::string_view payload) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndRound() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool PeerDone(const Peer& peer, uint64_t round) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FirstRefusal() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RoundTimeout(uint64_t round, std::chrono::milliseconds deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const GrpcLinkOptions options_;
  const uint64_t session_id_;
  int port_ = 0;

  mutable absl::Mutex mu_;
  // One condition for every change; the waiters are few.
  absl::CondVar cv_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool peers_set_ ABSL_GUARDED_BY(mu_) = false;
  // Indexed by pool; null at this pool's own index. The vector itself is
  // fixed after Start.
  std::vector<std::unique_ptr<Peer>> peers_;
  // The outgoing round.
  bool out_active_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t out_round_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const std::string> out_payload_ ABSL_GUARDED_BY(mu_);
  // Incoming frames of rounds below this are acknowledged and dropped.
  uint64_t in_min_round_ ABSL_GUARDED_BY(mu_) = 0;
  bool completed_any_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t last_completed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t frames_written_ ABSL_GUARDED_BY(mu_) = 0;      // for testing.corrupt_frame
  uint64_t new_frames_written_ ABSL_GUARDED_BY(mu_) = 0;  // for testing.cut_after_frames
  LinkStats stats_ ABSL_GUARDED_BY(mu_);
  // This pool's progress, as ReportProgress last set it.
  uint64_t progress_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t recent_unit_ms_ ABSL_GUARDED_BY(mu_) = 0;

  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
};

class GrpcLink::Impl::Service final : public v1::GradientExchange::Service {
 public:
  explicit Service(Impl* impl) : impl_(impl) {}
  grpc::Status Exchange(grpc::ServerContext*, ServerStream* stream) override {
    return impl_->Serve(stream);
  }

 private:
  Impl* const impl_;
};

// ---------------------------------------------------------------------------
// Lifetime

absl::Status GrpcLink::Impl::Start() {
  const absl::Time now = absl::Now();
  for (int p = 0; p < options_.pool_count; ++p) {
    if (p == options_.pool_index) {
      peers_.push_back(nullptr);
      continue;
    }
    auto peer = std::make_unique<Peer>(p);
    peer->last_heard = now;
    peer->progress_changed = now;
    // The data streams, then the control stream (heartbeats only), so that
    // signs of life never wait behind the frames of a long payload.
    for (int s = 0; s <= options_.streams_per_peer; ++s) {
      peer->slots.push_back(std::make_unique<Slot>(p, s));
    }
    peers_.push_back(std::move(peer));
  }

  service_ = std::make_unique<Service>(this);
  grpc::ServerBuilder builder;
  ListenExclusively(builder);
  builder.AddListeningPort(options_.listen_address, options_.server_credentials, &port_);
  builder.RegisterService(service_.get());
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, Ms(options_.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Ms(options_.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Peers ping every keepalive_time even between rounds; let them.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             Ms(options_.keepalive_time) / 2);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for exchange peers on ", options_.listen_address));
  }
  if (!options_.peer_addresses.empty()) {
    absl::Status s = SetPeers(options_.peer_addresses);
    if (!s.ok()) return s;
  }
  for (auto& peer : peers_) {
    if (peer == nullptr) continue;
    for (auto& slot : peer->slots) {
      Slot* raw = slot.get();
      slot->thread = std::thread([this, raw] { RunSlot(raw); });
    }
  }
  return absl::OkStatus();
}

GrpcLink::Impl::~Impl() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    for (auto& peer : peers_) {
      if (peer == nullptr) continue;
      for (auto& slot : peer->slots) {
        if (slot->connection != nullptr) slot->connection->context.TryCancel();
      }
    }
    cv_.SignalAll();
  }
  for (auto& peer : peers_) {
    if (peer == nullptr) continue;
    for (auto& slot : peer->slots) {
      if (slot->thread.joinable()) slot->thread.join();
    }
  }
  // Cancels the peers' calls at once; the acks of every completed round were
  // handed to TCP before that round completed.
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
}

absl::Status GrpcLink::Impl::SetPeers(const std::vector<std::string>& addresses) {
  if (static_cast<int>(addresses.size()) != options_.pool_count) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", options_.pool_count,
                                                   " peer addresses (one per pool), got ",
                                                   addresses.size()));
  }
  for (int p = 0; p < options_.pool_count; ++p) {
    if (p != options_.pool_index && addresses[p].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("no address for pool ", p));
    }
  }
  absl::MutexLock lock(&mu_);
  for (auto& peer : peers_) {
    if (peer == nullptr || peer->address == addresses[peer->index]) continue;
    peer->address = addresses[peer->index];
    for (auto& slot : peer->slots) {
      slot->stub =
          v1::GradientExchange::NewStub(MakeChannel(peer->address, peer->index, slot->index));
      ++slot->generation;
      if (slot->connection != nullptr) slot->connection->context.TryCancel();
    }
  }
  peers_set_ = true;
  cv_.SignalAll();
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> GrpcLink::Impl::MakeChannel(const std::string& address, int peer,
                                                           int slot) const {
  grpc::ChannelArguments args;
  // A channel of its own subchannels, and so its own TCP connection: gRPC
  // would otherwise share one connection among equal channels.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetString("tandem.exchange_stream", absl::StrCat(options_.pool_index, ">", peer, "/", slot));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, Ms(options_.keepalive_time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Ms(options_.keepalive_timeout));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, Ms(options_.initial_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Ms(options_.max_backoff));
  // gRPC's minimum time allowed for one connection attempt (TCP + TLS).
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, Ms(options_.handshake_timeout));
  return grpc::CreateCustomChannel(address, options_.channel_credentials, args);
}

absl::Duration GrpcLink::Impl::Backoff(int failures) const {
  absl::Duration d = ToAbsl(options_.initial_backoff);
  const absl::Duration max = ToAbsl(options_.max_backoff);
  for (int i = 1; i < failures && d < max; ++i) d *= 2;
  return std::min(d, max);
}

ExchangeMessage GrpcLink::Impl::MakeHello(uint32_t stream_index) const {
  ExchangeMessage message;
  v1::ExchangeHello* hello = message.mutable_hello();
  hello->set_protocol_version(options_.testing.protocol_version);
  hello->set_job_id(options_.job_id);
  hello->set_cloud(options_.cloud);
  hello->set_stream_index(stream_index);
  hello->set_stream_count(static_cast<uint32_t>(options_.streams_per_peer));
  hello->set_pool_index(static_cast<uint32_t>(options_.pool_index));
  hello->set_pool_count(static_cast<uint32_t>(options_.pool_count));
  hello->set_session_id(session_id_);
  return message;
}

std::string GrpcLink::Impl::Name(const Peer& peer) const {
  std::string name = absl::StrCat("pool ", peer.index);
  if (!peer.cloud.empty()) absl::StrAppend(&name, " (cloud '", peer.cloud, "')");
  absl::StrAppend(&name, " at ", peer.address.empty() ? "<no address>" : peer.address);
  return name;
}

// ---------------------------------------------------------------------------
// Sending side: each slot's thread keeps its stream up and writes frames; a
// connection thread per attempt opens the call and reads the acks.

void GrpcLink::Impl::RunSlot(Slot* slot) {
  constexpr int kRefusedFailures = 64;  // retry a refused link at max_backoff
  int failures = 0;
  mu_.Lock();
  while (!shutdown_) {
    if (slot->stub == nullptr) {
      cv_.Wait(&mu_);
      continue;
    }
    if (failures > 0) {
      const uint64_t generation = slot->generation;
      const absl::Time retry = absl::Now() + Backoff(failures);
      while (!shutdown_ && slot->generation == generation && absl::Now() < retry) {
        cv_.WaitWithDeadline(&mu_, retry);
      }
      if (shutdown_) break;
    }
    switch (RunConnection(slot)) {
      case Outcome::kWasUp:
        failures = 1;
        break;
      case Outcome::kFailed:
        failures = std::min(failures + 1, kRefusedFailures);
        break;
      case Outcome::kRefused:
        failures = kRefusedFailures;
        break;
    }
  }
  mu_.Unlock();
}

GrpcLink::Impl::Outcome GrpcLink::Impl::RunConnection(Slot* slot) {
  Peer& peer = *peers_[slot->peer];
  Connection connection;
  slot->connection = &connection;
  const uint64_t generation = slot->generation;
  std::thread reader(
      [this, slot, &connection, stub = slot->stub] { ReadConnection(slot, &connection, stub); });

  const absl::Time handshake_deadline = absl::Now() + ToAbsl(options_.handshake_timeout);
  auto live = [&] { return !shutdown_ && !connection.done && slot->generation == generation; };
  while (live() && !connection.handshaken && absl::Now() < handshake_deadline) {
    cv_.WaitWithDeadline(&mu_, handshake_deadline);
  }
  Outcome outcome = Outcome::kFailed;
  if (live() && connection.handshaken) {
    slot->up = true;
    ++peer.streams_up;
    if (slot->ever_up) ++stats_.reconnects;
    slot->ever_up = true;
    slot->last_write = absl::Now();
    peer.refused_by_peer = absl::OkStatus();
    cv_.SignalAll();
    WriteFrames(slot, &connection, generation);
    slot->up = false;
    --peer.streams_up;
    outcome = Outcome::kWasUp;
  } else if (live()) {
    connection.error =
        absl::StrCat("no answer to the hello within ", options_.handshake_timeout.count(), " ms");
  }
  connection.context.TryCancel();
  mu_.Unlock();
  reader.join();
  // Reads have ended, so Finish only collects the call's status.
  const grpc::Status status = connection.stream->Finish();
  mu_.Lock();
  slot->connection = nullptr;
  Requeue(peer, *slot);
  cv_.SignalAll();
  if (shutdown_ || slot->generation != generation) return Outcome::kFailed;
  peer.last_error = absl::StrCat("stream ", slot->index, ": ",
                                 connection.error.empty() ? Describe(status) : connection.error);
  if (!connection.handshaken && status.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
      peer.refused_by_peer.ok()) {
    peer.refused_by_peer = absl::FailedPreconditionError(
        absl::StrCat(Name(peer), " refused the link: ", status.error_message()));
  }
  if (!connection.handshaken && !peer.refused_by_peer.ok()) return Outcome::kRefused;
  return outcome;
}

void GrpcLink::Impl::WriteFrames(Slot* slot, Connection* connection, uint64_t generation) {
  Peer& peer = *peers_[slot->peer];
  const int window = options_.max_unacked_frames_per_stream;
  while (true) {
    // The control stream carries the heartbeats.
    bool heartbeat = false;
    while (!shutdown_ && !connection->done && slot->generation == generation &&
           !(slot->inflight < window && HasWork(peer, *slot))) {
      if (slot->index != options_.streams_per_peer) {
        cv_.Wait(&mu_);
        continue;
      }
      const absl::Time due = slot->last_write + ToAbsl(options_.heartbeat_interval);
      if (absl::Now() >= due) {
        heartbeat = true;
        break;
      }
      cv_.WaitWithDeadline(&mu_, due);
    }
    if (shutdown_ || connection->done || slot->generation != generation) return;
    if (heartbeat) {
      const ExchangeMessage message = MakeHeartbeat();
      stats_.wire_bytes_sent += message.ByteSizeLong();
      slot->last_write = absl::Now();
      mu_.Unlock();
      const bool ok = connection->stream->Write(message);
      mu_.Lock();
      if (!ok) return;
      continue;
    }

    std::deque<size_t>& source = peer.orphans.empty() ? slot->queue : peer.orphans;
    const size_t index = source.front();
    source.pop_front();
    OutFrame& frame = peer.frames[index];
    frame.state = FrameState::kInFlight;
    frame.slot = slot->index;
    ++slot->inflight;
    const bool resend = frame.sent;
    frame.sent = true;
    const uint64_t round = out_round_;
    const std::shared_ptr<const std::string> payload = out_payload_;
    const bool corrupt = ++frames_written_ == options_.testing.corrupt_frame;
    bool cut = false;
    if (!resend) cut = ++new_frames_written_ == options_.testing.cut_after_frames;
    if (cut) slot->drop_acks = true;
    mu_.Unlock();

    const uint64_t offset = index * options_.frame_bytes;
    const size_t size = std::min<uint64_t>(options_.frame_bytes, payload->size() - offset);
    ExchangeMessage message;
    v1::ExchangeFrame* out = message.mutable_frame();
    out->set_step(round);
    out->set_offset(offset);
    out->set_payload_size(payload->size());
    out->set_data(payload->data() + offset, size);
    out->set_crc32c(Crc32c(out->data()));
    if (corrupt && size > 0) (*out->mutable_data())[0] ^= 0x5A;
    {
      // Counted before the write, so the counts are complete once the peer
      // has acknowledged the frame.
      absl::MutexLock lock(&mu_);
      stats_.payload_bytes_sent += size;
      stats_.wire_bytes_sent += message.ByteSizeLong();
      if (resend) ++stats_.frames_resent;
    }
    const bool ok = connection->stream->Write(message);

    mu_.Lock();
    slot->last_write = absl::Now();
    if (!ok) return;  // the connection thread sees the failure too; the status says why
    if (cut) {
      connection->error = "cut by the test hook";
      return;
    }
  }
}

bool GrpcLink::Impl::HasWork(Peer& peer, Slot& slot) {
  if (!out_active_ || slot.index == options_.streams_per_peer) return false;
  // Entries for frames acked meanwhile are skipped here.
  for (std::deque<size_t>* q : {&peer.orphans, &slot.queue}) {
    while (!q->empty() && peer.frames[q->front()].state != FrameState::kQueued) q->pop_front();
    if (!q->empty()) return true;
  }
  return false;
}

void GrpcLink::Impl::Requeue(Peer& peer, Slot& slot) {
  for (size_t i = 0; i < peer.frames.size(); ++i) {
    OutFrame& frame = peer.frames[i];
    if (frame.state == FrameState::kInFlight && frame.slot == slot.index) {
      frame.state = FrameState::kQueued;
      peer.orphans.push_back(i);
    }
  }
  peer.orphans.insert(peer.orphans.end(), slot.queue.begin(), slot.queue.end());
  slot.queue.clear();
  slot.inflight = 0;
  slot.drop_acks = false;
}

// Called with the session id of every hello from the peer, either way. A new
// one means the peer restarted: what its previous incarnation acknowledged
// is lost with it, so every frame is owed again; streams still open to the
// old one are dropped, and so are its partial payloads.
void GrpcLink::Impl::SeePeerSession(Peer& peer, uint64_t session) {
  if (session == peer.session) return;
  const bool first = peer.session == 0;
  peer.session = session;
  if (first) return;
  for (size_t i = 0; i < peer.frames.size(); ++i) {
    if (peer.frames[i].state == FrameState::kAcked) {
      peer.frames[i].state = FrameState::kQueued;
      peer.orphans.push_back(i);
    }
  }
  peer.frames_acked = 0;
  for (auto& slot : peer.slots) {
    Connection* c = slot->connection;
    if (c != nullptr && c->handshaken && c->session != session) c->context.TryCancel();
  }
  peer.in.clear();
  cv_.SignalAll();
}

void GrpcLink::Impl::Heard(Peer& peer, const v1::ExchangeHeartbeat* heartbeat) {
  const absl::Time now = absl::Now();
  peer.last_heard = now;
  if (heartbeat == nullptr) return;
  if (heartbeat->progress() != peer.progress) peer.progress_changed = now;
  peer.progress = heartbeat->progress();
  peer.recent_unit_ms = heartbeat->recent_unit_ms();
}

ExchangeMessage GrpcLink::Impl::MakeHeartbeat() const {
  ExchangeMessage message;
  message.mutable_heartbeat()->set_progress(progress_);
  message.mutable_heartbeat()->set_recent_unit_ms(recent_unit_ms_);
  return message;
}

void GrpcLink::Impl::ReadConnection(Slot* slot, Connection* connection,
                                    std::shared_ptr<v1::GradientExchange::Stub> stub) {
  // Blocks until the channel connects or fails, or the call is cancelled.
  std::unique_ptr<ClientStream> owned = stub->Exchange(&connection->context);
  ClientStream* stream = owned.get();
  {
    absl::MutexLock lock(&mu_);
    connection->stream = std::move(owned);
  }
  Peer& peer = *peers_[slot->peer];
  const ExchangeMessage hello = MakeHello(static_cast<uint32_t>(slot->index));
  const size_t wire = hello.ByteSizeLong();
  ExchangeMessage message;
  bool ok = stream->Write(hello);
  if (ok) {
    absl::MutexLock lock(&mu_);
    stats_.wire_bytes_sent += wire;
  }
  ok = ok && stream->Read(&message);
  if (ok) {
    absl::MutexLock lock(&mu_);
    if (message.has_ack() && !message.ack().error().empty()) {
      peer.refused_by_peer = absl::FailedPreconditionError(
          absl::StrCat(Name(peer), " refused the link: ", message.ack().error()));
      connection->error = absl::StrCat("refused: ", message.ack().error());
      ok = false;
    } else if (std::string wrong = CheckAnswer(peer, message); !wrong.empty()) {
      peer.refused_by_peer = absl::FailedPreconditionError(wrong);
      connection->error = wrong;
      ok = false;
    } else {
      connection->handshaken = true;
      connection->session = message.hello().session_id();
      peer.cloud = message.hello().cloud();
      SeePeerSession(peer, connection->session);
      Heard(peer, nullptr);
    }
    cv_.SignalAll();
  }
  while (ok && stream->Read(&message)) {
    absl::MutexLock lock(&mu_);
    if (message.has_heartbeat()) {
      // From a replaced incarnation, it says nothing of the live one.
      if (connection->session == peer.session) Heard(peer, &message.heartbeat());
      continue;
    }
    if (!message.has_ack()) {
      connection->error =
          "the peer answered a frame with something other than an ExchangeAck or heartbeat";
      break;
    }
    if (connection->session == peer.session) {
      Heard(peer, nullptr);
      // The peer takes our payload: the round moves, whatever its training
      // loop does meanwhile.
      peer.progress_changed = absl::Now();
    }
    HandleAck(slot, *connection, message.ack());
  }
  absl::MutexLock lock(&mu_);
  connection->done = true;
  cv_.SignalAll();
}

std::string GrpcLink::Impl::CheckAnswer(const Peer& peer, const ExchangeMessage& answer) const {
  if (!answer.has_hello()) {
    return absl::StrCat("pool ", peer.index, " at ", peer.address,
                        " answered the hello with something other than an ExchangeHello");
  }
  const v1::ExchangeHello& hello = answer.hello();
  std::string who = absl::StrCat("the server at ", peer.address, " (expected pool ", peer.index,
                                 " of job '", options_.job_id, "')");
  if (hello.protocol_version() != options_.testing.protocol_version) {
    return absl::StrCat(who, " speaks exchange protocol version ", hello.protocol_version(),
                        ", this pool speaks version ", options_.testing.protocol_version);
  }
  if (hello.job_id() != options_.job_id) {
    return absl::StrCat(who, " serves job '", hello.job_id(), "'");
  }
  if (hello.pool_index() != static_cast<uint32_t>(peer.index) ||
      hello.pool_count() != static_cast<uint32_t>(options_.pool_count)) {
    return absl::StrCat(who, " is pool ", hello.pool_index(), " of ", hello.pool_count(),
                        " (check the peer addresses)");
  }
  return "";
}

void GrpcLink::Impl::HandleAck(Slot* slot, const Connection& connection,
                               const v1::ExchangeAck& ack) {
  Peer& peer = *peers_[slot->peer];
  // Acks from a stream to an incarnation of the peer that has been replaced
  // are void (see PeerRestarted).
  if (slot->drop_acks || connection.session != peer.session) return;
  if (!ack.error().empty()) {
    // The peer refused a frame as malformed: a bug on one side, not a
    // condition a retry would fix.
    peer.rejected = absl::FailedPreconditionError(
        absl::StrCat(Name(peer), " rejected a frame of round ", ack.step(), ": ", ack.error()));
    cv_.SignalAll();
    return;
  }
  if (!out_active_ || ack.step() != out_round_ || ack.offset() % options_.frame_bytes != 0) return;
  const uint64_t index = ack.offset() / options_.frame_bytes;
  if (index >= peer.frames.size()) return;
  OutFrame& frame = peer.frames[index];
  if (ack.resend()) {
    if (frame.state == FrameState::kInFlight && frame.slot == slot->index) {
      frame.state = FrameState::kQueued;
      --slot->inflight;
      slot->queue.push_front(index);
    }
  } else if (frame.state != FrameState::kAcked) {
    if (frame.state == FrameState::kInFlight) --peer.slots[frame.slot]->inflight;
    frame.state = FrameState::kAcked;
    ++peer.frames_acked;
  }
  cv_.SignalAll();
}

// ---------------------------------------------------------------------------
// Receiving side: one handler per incoming stream.

grpc::Status GrpcLink::Impl::Serve(ServerStream* stream) {
  ExchangeMessage message;
  if (!stream->Read(&message)) return grpc::Status::OK;
  if (!message.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "a GradientExchange stream must open with an ExchangeHello");
  }
  const v1::ExchangeHello hello = message.hello();
  const std::string refusal = CheckHello(hello);
  if (!refusal.empty()) {
    ExchangeMessage answer;
    answer.mutable_ack()->set_error(refusal);
    const size_t wire = answer.ByteSizeLong();
    {
      absl::MutexLock lock(&mu_);
      if (hello.pool_index() < peers_.size() && peers_[hello.pool_index()] != nullptr) {
        peers_[hello.pool_index()]->refused_by_us =
            absl::FailedPreconditionError(absl::StrCat("refused a link from a peer: ", refusal));
        cv_.SignalAll();
      }
      stats_.wire_bytes_sent += wire;
    }
    stream->Write(answer);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, refusal);
  }
  Peer& peer = *peers_[hello.pool_index()];
  const uint64_t session = hello.session_id();
  {
    absl::MutexLock lock(&mu_);
    peer.refused_by_us = absl::OkStatus();
    if (peer.cloud.empty()) peer.cloud = hello.cloud();
    SeePeerSession(peer, session);
    Heard(peer, nullptr);
  }
  {
    const ExchangeMessage answer = MakeHello(hello.stream_index());
    const size_t wire = answer.ByteSizeLong();
    if (!stream->Write(answer)) return grpc::Status::OK;
    absl::MutexLock lock(&mu_);
    stats_.wire_bytes_sent += wire;
  }
  while (stream->Read(&message)) {
    if (message.has_heartbeat()) {
      ExchangeMessage reply;
      {
        absl::MutexLock lock(&mu_);
        if (session == peer.session) Heard(peer, &message.heartbeat());
        reply = MakeHeartbeat();
        stats_.wire_bytes_sent += reply.ByteSizeLong();
      }
      if (!stream->Write(reply)) break;
      continue;
    }
    if (!message.has_frame()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "expected an ExchangeFrame or ExchangeHeartbeat after the hello");
    }
    {
      absl::MutexLock lock(&mu_);
      if (session == peer.session) {
        Heard(peer, nullptr);
        // A frame is the peer's training loop at work (it sends a round).
        peer.progress_changed = absl::Now();
      }
    }
    const v1::ExchangeFrame& frame = message.frame();
    ExchangeMessage reply;
    v1::ExchangeAck* ack = reply.mutable_ack();
    ack->set_step(frame.step());
    ack->set_offset(frame.offset());
    bool count = false;
    std::string error;
    if (Crc32c(frame.data()) != frame.crc32c()) {
      ack->set_resend(true);
      absl::MutexLock lock(&mu_);
      ++stats_.bad_frames_received;
    } else {
      absl::MutexLock lock(&mu_);
      error = Store(peer, session, frame, &count);
    }
    if (!error.empty()) ack->set_error(error);
    const size_t wire = reply.ByteSizeLong();
    if (!stream->Write(reply)) break;
    absl::MutexLock lock(&mu_);
    stats_.wire_bytes_sent += wire;
    if (!error.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, error);
    // Counted only now, so the round completes after its acks left.
    if (count) MarkAcked(peer, frame.step(), frame.offset());
  }
  return grpc::Status::OK;
}

std::string GrpcLink::Impl::CheckHello(const v1::ExchangeHello& hello) const {
  const std::string them =
      absl::StrCat("pool ", hello.pool_index(), " (cloud '", hello.cloud(), "')");
  const std::string us =
      absl::StrCat("pool ", options_.pool_index, " (cloud '", options_.cloud, "')");
  if (hello.protocol_version() != options_.testing.protocol_version) {
    return absl::StrCat("exchange protocol version mismatch: ", them, " speaks version ",
                        hello.protocol_version(), ", ", us, " speaks version ",
                        options_.testing.protocol_version);
  }
  if (hello.job_id() != options_.job_id) {
    return absl::StrCat("job id mismatch: ", them, " runs job '", hello.job_id(), "', ", us,
                        " runs job '", options_.job_id, "'");
  }
  if (hello.pool_count() != static_cast<uint32_t>(options_.pool_count)) {
    return absl::StrCat("pool count mismatch: ", them, " counts ", hello.pool_count(), " pools, ",
                        us, " counts ", options_.pool_count);
  }
  if (hello.pool_index() >= static_cast<uint32_t>(options_.pool_count) ||
      hello.pool_index() == static_cast<uint32_t>(options_.pool_index)) {
    return absl::StrCat("pool index clash: ", them, " connected to ", us);
  }
  return "";
}

std::string GrpcLink::Impl::Store(Peer& peer, uint64_t session, const v1::ExchangeFrame& frame,
                                  bool* count) {
  *count = false;
  if (frame.step() < in_min_round_) return "";  // a round this pool is done with
  if (session != peer.session) return "";       // from an incarnation that is gone
  auto it = peer.in.find(frame.step());
  if (it == peer.in.end()) {
    if (frame.payload_size() > options_.max_payload_bytes) {
      return absl::StrCat("round ", frame.step(), ": a payload of ", frame.payload_size(),
                          " bytes exceeds the receiver's max_payload_bytes (",
                          options_.max_payload_bytes, ")");
    }
    it = peer.in.emplace(frame.step(), InRound{}).first;
    it->second.size = frame.payload_size();
    it->second.data.resize(frame.payload_size());
  }
  InRound& round = it->second;
  const uint64_t offset = frame.offset();
  const uint64_t size = frame.data().size();
  if (round.size != frame.payload_size()) {
    return absl::StrCat("round ", frame.step(), ": payload size changed from ", round.size, " to ",
                        frame.payload_size());
  }
  if (offset > round.size || size > round.size - offset || (size == 0 && round.size != 0)) {
    return absl::StrCat("round ", frame.step(), ": frame of ", size, " bytes at offset ", offset,
                        " does not fit a payload of ", round.size, " bytes");
  }
  auto next = round.pieces.lower_bound(offset);
  if (next != round.pieces.end() && next->first == offset) {
    if (next->second.size != size) {
      return absl::StrCat("round ", frame.step(), ": frame at offset ", offset,
                          " changed size from ", next->second.size, " to ", size);
    }
    *count = !next->second.acked;  // a duplicate, maybe of a frame whose ack was lost
    return "";
  }
  const bool overlaps_next = next != round.pieces.end() && next->first < offset + size;
  const bool overlaps_prev = next != round.pieces.begin() &&
                             std::prev(next)->first + std::prev(next)->second.size > offset;
  if (overlaps_next || overlaps_prev) {
    return absl::StrCat("round ", frame.step(), ": frame at offset ", offset,
                        " overlaps another frame");
  }
  if (size > 0) std::memcpy(&round.data[offset], frame.data().data(), size);
  round.pieces.emplace_hint(next, offset, Piece{size, false});
  stats_.payload_bytes_received += size;
  *count = true;
  return "";
}

void GrpcLink::Impl::MarkAcked(Peer& peer, uint64_t round_id, uint64_t offset) {
  auto it = peer.in.find(round_id);
  if (it == peer.in.end()) return;
  InRound& round = it->second;
  auto piece = round.pieces.find(offset);
  if (piece == round.pieces.end() || piece->second.acked) return;
  piece->second.acked = true;
  round.acked_bytes += piece->second.size;
  round.any_acked = true;
  if (round.complete()) cv_.SignalAll();
}

// ---------------------------------------------------------------------------
// The caller's side.

void GrpcLink::Impl::StartRound(uint64_t round, absl::string_view payload) {
  out_active_ = true;
  out_round_ = round;
  out_payload_ = std::make_shared<const std::string>(payload);
  const size_t fb = options_.frame_bytes;
  const size_t count = payload.empty() ? 1 : (payload.size() + fb - 1) / fb;
  for (auto& peer : peers_) {
    if (peer == nullptr) continue;
    peer->frames.assign(count, OutFrame{});
    peer->frames_acked = 0;
    peer->orphans.clear();
    peer->rejected = absl::OkStatus();
    for (auto& slot : peer->slots) {
      slot->queue.clear();
      slot->inflight = 0;
    }
    // Round-robin over the streams; frames of a stream that is down go to
    // whichever stream is up first.
    for (size_t i = 0; i < count; ++i) {
      Slot& slot = *peer->slots[i % options_.streams_per_peer];
      (slot.up ? slot.queue : peer->orphans).push_back(i);
    }
  }
}

void GrpcLink::Impl::EndRound() {
  out_active_ = false;
  out_payload_.reset();
  for (auto& peer : peers_) {
    if (peer == nullptr) continue;
    peer->frames.clear();
    peer->frames_acked = 0;
    peer->orphans.clear();
    for (auto& slot : peer->slots) {
      slot->queue.clear();
      slot->inflight = 0;
    }
  }
}

bool GrpcLink::Impl::PeerDone(const Peer& peer, uint64_t round) const {
  if (peer.frames_acked != peer.frames.size()) return false;
  auto it = peer.in.find(round);
  return it != peer.in.end() && it->second.complete();
}

absl::Status GrpcLink::Impl::FirstRefusal() const {
  for (const auto& peer : peers_) {
    if (peer == nullptr) continue;
    if (!peer->refused_by_peer.ok()) return peer->refused_by_peer;
    if (!peer->refused_by_us.ok()) return peer->refused_by_us;
    if (!peer->rejected.ok()) return peer->rejected;
  }
  return absl::OkStatus();
}

absl::Status GrpcLink::Impl::RoundTimeout(uint64_t round,
                                          std::chrono::milliseconds deadline) const {
  std::vector<std::string> parts;
  bool any_up = false;
  for (const auto& peer : peers_) {
    if (peer == nullptr || PeerDone(*peer, round)) continue;
    any_up = any_up || peer->streams_up > 0;
    auto in = peer->in.find(round);
    std::string theirs = in == peer->in.end() ? "nothing of its own"
                                              : absl::StrCat(in->second.acked_bytes, " of ",
                                                             in->second.size, " bytes of its own");
    std::string part =
        absl::StrCat(Name(*peer), " acknowledged ", peer->frames_acked, " of ", peer->frames.size(),
                     " frames of ours and delivered ", theirs, "; ", peer->streams_up, " of ",
                     peer->slots.size(), " streams up");
    if (!peer->last_error.empty()) absl::StrAppend(&part, "; last error: ", peer->last_error);
    parts.push_back(std::move(part));
  }
  std::string message = absl::StrCat("exchange round ", round, " did not complete within ",
                                     deadline.count(), " ms: ", absl::StrJoin(parts, "; "));
  return any_up ? absl::DeadlineExceededError(message) : absl::UnavailableError(message);
}

absl::StatusOr<std::vector<std::string>> GrpcLink::Impl::Exchange(
    uint64_t round, absl::string_view payload, std::chrono::milliseconds deadline) {
  const absl::Time end = absl::Now() + ToAbsl(deadline);
  absl::MutexLock lock(&mu_);
  if (completed_any_ && round <= last_completed_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "exchange round ", round, " is not above the last completed round ", last_completed_));
  }
  if (options_.pool_count > 1 && !peers_set_) {
    return absl::FailedPreconditionError(
        "exchange peer addresses are not set (GrpcLinkOptions::peer_addresses or SetPeers)");
  }
  if (out_active_ && round == out_round_) {
    if (*out_payload_ != payload) {
      return absl::InvalidArgumentError(absl::StrCat(
          "exchange round ", round, " was started with another payload (", out_payload_->size(),
          " bytes, now ", payload.size(), "); a round's payload cannot change, use a new round"));
    }
  } else if (out_active_ && round < out_round_) {
    return absl::InvalidArgumentError(absl::StrCat("exchange round ", round, " is below round ",
                                                   out_round_, ", which was started already"));
  } else {
    StartRound(round, payload);
  }
  in_min_round_ = round;
  for (auto& peer : peers_) {
    if (peer == nullptr) continue;
    peer->in.erase(peer->in.begin(), peer->in.lower_bound(round));
  }
  cv_.SignalAll();

  while (true) {
    absl::Status refusal = FirstRefusal();
    if (!refusal.ok()) return refusal;
    bool done = true;
    for (const auto& peer : peers_) {
      if (peer != nullptr && !PeerDone(*peer, round)) done = false;
    }
    if (done) break;
    if (absl::Now() >= end) return RoundTimeout(round, deadline);
    cv_.WaitWithDeadline(&mu_, end);
  }

  std::vector<std::string> result(options_.pool_count);
  result[options_.pool_index] = std::string(payload);
  for (auto& peer : peers_) {
    if (peer == nullptr) continue;
    auto it = peer->in.find(round);
    result[peer->index] = std::move(it->second.data);
    peer->in.erase(it);
  }
  completed_any_ = true;
  last_completed_ = round;
  in_min_round_ = round + 1;
  EndRound();
  return result;
}

absl::Status GrpcLink::Impl::Connect(std::chrono::milliseconds deadline) {
  const absl::Time end = absl::Now() + ToAbsl(deadline);
  absl::MutexLock lock(&mu_);
  if (options_.pool_count > 1 && !peers_set_) {
    return absl::FailedPreconditionError(
        "exchange peer addresses are not set (GrpcLinkOptions::peer_addresses or SetPeers)");
  }
  while (true) {
    absl::Status refusal = FirstRefusal();
    if (!refusal.ok()) return refusal;
    std::vector<std::string> missing;
    bool any_up = false;
    for (const auto& peer : peers_) {
      if (peer == nullptr || peer->streams_up == static_cast<int>(peer->slots.size())) continue;
      any_up = any_up || peer->streams_up > 0;
      std::string part = absl::StrCat(Name(*peer), ": ", peer->streams_up, " of ",
                                      peer->slots.size(), " streams up");
      if (!peer->last_error.empty()) absl::StrAppend(&part, "; last error: ", peer->last_error);
      missing.push_back(std::move(part));
    }
    if (missing.empty()) return absl::OkStatus();
    if (absl::Now() >= end) {
      std::string message = absl::StrCat("exchange peers not connected within ", deadline.count(),
                                         " ms: ", absl::StrJoin(missing, "; "));
      return any_up ? absl::DeadlineExceededError(message) : absl::UnavailableError(message);
    }
    cv_.WaitWithDeadline(&mu_, end);
  }
}

LinkStats GrpcLink::Impl::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

std::vector<PeerHealth> GrpcLink::Impl::Peers() const {
  const absl::Time now = absl::Now();
  auto ms = [](absl::Duration d) {
    return std::chrono::milliseconds(absl::ToInt64Milliseconds(std::max(d, absl::ZeroDuration())));
  };
  absl::MutexLock lock(&mu_);
  std::vector<PeerHealth> out;
  for (const auto& peer : peers_) {
    if (peer == nullptr) continue;
    PeerHealth health;
    health.pool = peer->index;
    health.silent_for = ms(now - peer->last_heard);
    health.streams_up = peer->streams_up;
    health.progress = peer->progress;
    health.recent_unit = std::chrono::milliseconds(peer->recent_unit_ms);
    health.progress_unchanged_for = ms(now - peer->progress_changed);
    health.delivered = !out_active_ || PeerDone(*peer, out_round_);
    out.push_back(health);
  }
  return out;
}

void GrpcLink::Impl::ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit) {
  absl::MutexLock lock(&mu_);
  progress_ = std::max(progress_, units);
  recent_unit_ms_ = static_cast<uint32_t>(
      std::clamp<int64_t>(recent_unit.count(), 0, std::numeric_limits<uint32_t>::max()));
}

// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<GrpcLink>> GrpcLink::Create(const GrpcLinkOptions& options) {
  auto invalid = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("GrpcLinkOptions: ", what));
  };
  if (options.job_id.empty()) return invalid("job_id is empty");
  if (options.pool_count < 1 || options.pool_index < 0 ||
      options.pool_index >= options.pool_count) {
    return invalid(absl::StrCat("pool_index ", options.pool_index, " is not in [0, pool_count ",
                                options.pool_count, ")"));
  }
  if (options.streams_per_peer < 1 || options.streams_per_peer > 64) {
    return invalid(
        absl::StrCat("streams_per_peer ", options.streams_per_peer, " is not in [1, 64]"));
  }
  if (options.frame_bytes < 1 || options.frame_bytes > kMaxFrameBytes) {
    return invalid(
        absl::StrCat("frame_bytes ", options.frame_bytes, " is not in [1, ", kMaxFrameBytes, "]"));
  }
  if (options.max_unacked_frames_per_stream < 1) {
    return invalid("max_unacked_frames_per_stream must be at least 1");
  }
  if (options.server_credentials == nullptr || options.channel_credentials == nullptr) {
    return invalid(
        "server_credentials and channel_credentials are required (tandem::ServerCredentials / "
        "ChannelCredentials for TLS, or the grpc::Insecure* ones)");
  }
  if (options.listen_address.empty()) return invalid("listen_address is empty");
  if (options.keepalive_time.count() <= 0 || options.keepalive_timeout.count() <= 0 ||
      options.initial_backoff.count() <= 0 || options.max_backoff < options.initial_backoff ||
      options.handshake_timeout.count() <= 0 || options.heartbeat_interval.count() <= 0) {
    return invalid(
        "keepalive_time, keepalive_timeout, initial_backoff, handshake_timeout and "
        "heartbeat_interval must be positive, and max_backoff at least initial_backoff");
  }
  auto impl = std::make_unique<Impl>(options);
  absl::Status s = impl->Start();
  if (!s.ok()) return s;
  return std::unique_ptr<GrpcLink>(new GrpcLink(std::move(impl)));
}

GrpcLink::GrpcLink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GrpcLink::~GrpcLink() = default;

int GrpcLink::port() const { return impl_->port(); }
absl::Status GrpcLink::SetPeers(const std::vector<std::string>& addresses) {
  return impl_->SetPeers(addresses);
}
int GrpcLink::pool_index() const { return impl_->options().pool_index; }
int GrpcLink::pool_count() const { return impl_->options().pool_count; }
absl::Status GrpcLink::Connect(std::chrono::milliseconds deadline) {
  return impl_->Connect(deadline);
}
absl::StatusOr<std::vector<std::string>> GrpcLink::Exchange(uint64_t round,
                                                            absl::string_view payload,
                                                            std::chrono::milliseconds deadline) {
  return impl_->Exchange(round, payload, deadline);
}
LinkStats GrpcLink::Stats() const { return impl_->Stats(); }
std::vector<PeerHealth> GrpcLink::Peers() const { return impl_->Peers(); }
void GrpcLink::ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit) {
  impl_->ReportProgress(units, recent_unit);
}

}  // namespace tandem
