// GrpcLink: the Link between pool leaders over the WAN, on gRPC.
//
// Each link runs a GradientExchange server (it receives the other pools'
// payloads there) and opens `streams_per_peer` sending streams to each other
// pool's server, each stream on its own channel and so its own TCP connection
// (parallel connections fill a long fat pipe that one TCP window cannot).
//
// Wire protocol (proto/tandem/v1/exchange.proto), per sending stream:
//   sender   -> ExchangeHello{protocol_version, job_id, cloud, stream_index,
//                             stream_count, pool_index, pool_count,
//                             session_id}
//   receiver -> ExchangeHello{its own values}          accepted, or
//               ExchangeAck{error} + FAILED_PRECONDITION  refused: another
//               protocol version, job id or pool count (the text names both
//               sides' values)
//   sender   -> ExchangeFrame{step = round, offset, payload_size, data,
//                             crc32c of data}   ... any number, any round
//   receiver -> ExchangeAck{step, offset}           frame stored (or a
//               duplicate, or of a round the receiver is done with), or
//               ExchangeAck{step, offset, resend}   checksum failed; not stored
//   sender   -> ExchangeHeartbeat{progress, recent_unit_ms}   every
//               heartbeat_interval, on the control stream
//   receiver -> ExchangeHeartbeat{its own progress, recent_unit_ms}
// Besides its streams_per_peer data streams, a link opens one control stream
// to each peer (stream index streams_per_peer, its own TCP connection too)
// that carries no frames, only heartbeats, so that signs of life never queue
// behind the frames of a long payload on a slow path.
// Every message from a peer, either way, counts as a sign of life
// (PeerHealth::silent_for); heartbeats also carry the owners' progress
// counters (Link::ReportProgress), so a peer that is busy outside the
// exchange -- evaluating, checkpointing, slowed down -- is seen alive and
// making progress, and one whose process or path is gone goes silent within
// about a heartbeat interval plus the liveness window its caller chooses.
// Frames from a peer, and its acks of our frames, count as progress too: a
// round that is moving is not stuck, however long the payload takes.
// A payload is cut into frames of frame_bytes (the last one shorter; an empty
// payload is one empty frame). Frames are dealt round-robin to the streams;
// at most max_unacked_frames_per_stream frames are unacknowledged on a stream.
// The receiver acknowledges a frame only after storing it, and counts a round
// as received only once its acknowledgements are written, so a pool whose
// Exchange returned has handed its last acks to TCP.
//
// Streams are long-lived (kept across rounds, with HTTP/2 keepalive) and
// reconnected by the link itself with exponential backoff. When a stream
// breaks, the frames it had written that were not yet acknowledged, and the
// frames still queued for it, go to a shared queue that every live stream
// drains first. Resume guarantee: a frame the peer acknowledged is not sent
// again (in this round, nor when the caller retries the round after a
// failure), so one broken stream costs at most max_unacked_frames_per_stream
// frames sent twice. Frames are placed by offset, so the receiver is
// indifferent to order and duplicates.
//
// Every link instance has a random session id, sent in its hellos. When a
// peer answers with a new session id (it restarted), everything it had
// acknowledged is sent again; when a peer's streams arrive with a new session
// id, the partial payloads of its previous incarnation are dropped.
//
// Thread-safety: as Link. The object owns its threads (one per sending stream
// plus one per live connection, and gRPC's server threads); the destructor
// cancels every call and joins them, and returns promptly.
#ifndef TANDEM_TRANSPORT_GRPC_LINK_H_
#define TANDEM_TRANSPORT_GRPC_LINK_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "transport/link.h"

namespace tandem {

// Bumped on any change a peer running the previous version would misread.
inline constexpr uint32_t kExchangeProtocolVersion = 2;  // 2: heartbeats
// Well under gRPC's default 4 MiB message limit.
inline constexpr size_t kMaxFrameBytes = size_t{1} << 20;

struct GrpcLinkOptions {
  std::string job_id;  // required; both ends must agree
  std::string cloud;   // this pool's cloud, for messages
  int pool_index = 0;
  int pool_count = 2;
  // Where this link's server listens, "host:port"; port 0 picks a free port
  // (GrpcLink::port() tells which).
  std::string listen_address = "127.0.0.1:0";
  // "host:port" of every pool's server by pool index (this pool's own entry
  // is ignored). May be left empty and given later with SetPeers.
  std::vector<std::string> peer_addresses;

  int streams_per_peer = 4;
  size_t frame_bytes = kMaxFrameBytes;  // 1..kMaxFrameBytes
  int max_unacked_frames_per_stream = 8;
  // Largest payload accepted from a peer (a bound on what a peer can make
  // this pool allocate).
  uint64_t max_payload_bytes = uint64_t{16} << 30;

  // Required: tandem::ServerCredentials(dir) / ChannelCredentials(dir) for
  // mutual TLS, or grpc::InsecureServerCredentials() /
  // grpc::InsecureChannelCredentials().
  std::shared_ptr<grpc::ServerCredentials> server_credentials;
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;

  // HTTP/2 keepalive on both ends: a silent peer is found within about
  // keepalive_time + keepalive_timeout even while no round is running.
  std::chrono::milliseconds keepalive_time{10000};
  std::chrono::milliseconds keepalive_timeout{10000};
  // An idle link sends each peer a heartbeat this often (and gets one back),
  // so that PeerHealth::silent_for stays below it while the peer is alive.
  std::chrono::milliseconds heartbeat_interval{500};
  // A stream that fails is retried after initial_backoff, doubled on each
  // further failure up to max_backoff; also gRPC's own reconnect backoff.
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5000};
  // A stream whose hello is not answered in this time is dropped and retried
  // (bounds connecting to an address that swallows packets).
  std::chrono::milliseconds handshake_timeout{10000};

  // Fault injection for tests; zero values inject nothing.
  struct Testing {
    // Sent in hellos and required from peers.
    uint32_t protocol_version = kExchangeProtocolVersion;
    // The N-th frame this link writes (1-based, resends included) has one
    // byte of its data flipped after its CRC32C was computed.
    uint64_t corrupt_frame = 0;
    // The stream that writes the K-th frame (1-based, first sends only)
    // breaks right after writing it, as if the connection had dropped:
    // acknowledgements still in flight on it are lost.
    uint64_t cut_after_frames = 0;
  } testing;
};

class GrpcLink final : public Link {
 public:
  // Starts the server and the sending streams (which connect once peer
  // addresses are known). InvalidArgument for bad options, Unavailable if the
  // listen address cannot be bound.
  static absl::StatusOr<std::unique_ptr<GrpcLink>> Create(const GrpcLinkOptions& options);
  ~GrpcLink() override;
  GrpcLink(const GrpcLink&) = delete;
  GrpcLink& operator=(const GrpcLink&) = delete;

  // The port the server listens on.
  int port() const;

  // Sets (or changes) the peers' addresses, by pool index; this pool's entry
  // is ignored. Streams to a peer whose address changed are reconnected.
  // InvalidArgument unless there are pool_count entries, non-empty for peers.
  absl::Status SetPeers(const std::vector<std::string>& addresses);

  int pool_index() const override;
  int pool_count() const override;
  absl::Status Connect(std::chrono::milliseconds deadline) override;
  absl::StatusOr<std::vector<std::string>> Exchange(uint64_t round, absl::string_view payload,
                                                    std::chrono::milliseconds deadline) override;
  LinkStats Stats() const override;
  std::vector<PeerHealth> Peers() const override;
  void ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit) override;

 private:
  class Impl;
  explicit GrpcLink(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_GRPC_LINK_H_
