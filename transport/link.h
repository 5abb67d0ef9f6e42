// Link: a pool leader's connection to the leaders of the job's other pools
// (one pool per cloud), over which they swap one payload per round -- a step's
// encoded gradient, or a parameter digest -- so that every pool ends the round
// holding every pool's payload.
//
// Implementations: GrpcLink (transport/grpc_link.h, across the WAN) and
// InProcessLink (transport/in_process_link.h, pools as threads of one process,
// for tests of callers).
//
// Liveness: besides the rounds, a link knows of each peer whether it is alive
// (any message from it recently, heartbeats included, which the link sends by
// itself while idle) and how its owner's work goes (the progress counter each
// owner publishes with ReportProgress). Callers use Peers() to tell a peer
// that is gone from one that is busy; the link itself never gives up on a
// peer except through Exchange's deadline.
//
// Thread-safety: Connect and Exchange are called by one thread at a time (the
// pool leader's training thread); Stats, Peers and ReportProgress may be
// called from any thread.
#ifndef TANDEM_TRANSPORT_LINK_H_
#define TANDEM_TRANSPORT_LINK_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tandem {

// Counters since the link was created. Bytes count what this pool sent and
// received, summed over peers. Sends are counted as they are handed to the
// transport, so once Exchange returns its round is fully counted.
struct LinkStats {
  // Payload bytes sent to peers, resent frames included (so a payload of n
  // bytes sent once to each of p peers counts n * p).
  uint64_t payload_bytes_sent = 0;
  // Serialized size (protobuf ByteSizeLong) of every message this link wrote,
  // on its sending streams (hellos, frames, resends) and its receiving streams
  // (hellos, acks). Excludes gRPC's 5-byte message prefix, HTTP/2 framing,
  // keepalive pings and TLS records.
  uint64_t wire_bytes_sent = 0;
  // Payload bytes from peers accepted into a round; duplicates and frames that
  // failed their checksum are not counted.
  uint64_t payload_bytes_received = 0;
  // Frames written again: refused by the peer's checksum, or unacknowledged on
  // a stream that broke.
  uint64_t frames_resent = 0;
  // Frames from peers that failed their checksum (and were asked again).
  uint64_t bad_frames_received = 0;
  // Sending streams established again after they had been established once.
  uint64_t reconnects = 0;
};

// What a link knows of one peer's health.
struct PeerHealth {
  int pool = 0;
  // Since the last message of any kind from the peer (frames, acks, hellos,
  // heartbeats, on any stream, either way); since the link was created if
  // none came yet.
  std::chrono::milliseconds silent_for{0};
  // How many of our sending streams to the peer are up.
  int streams_up = 0;
  // The peer's progress counter and the longest time one of its recent units
  // took, as it last reported them (0 until it has), and how long neither
  // the counter changed nor the round in flight moved (a frame from the
  // peer, or its ack of ours), by this pool's clock (since the link was
  // created if neither ever did).
  uint64_t progress = 0;
  std::chrono::milliseconds recent_unit{0};
  std::chrono::milliseconds progress_unchanged_for{0};
  // Of the round in flight (the last Exchange that has not completed):
  // whether the peer delivered its payload and acknowledged ours. True when
  // no round is in flight.
  bool delivered = true;
};

class Link {
 public:
  virtual ~Link() = default;

  virtual int pool_index() const = 0;
  virtual int pool_count() const = 0;

  // Waits until the link can reach every peer; call once before the first
  // round to fail fast on a wrong address, certificate, job or version. OK, or
  // FailedPrecondition (a peer refused us or we refused it: the message says
  // why), or DeadlineExceeded / Unavailable naming the peers not reached.
  virtual absl::Status Connect(std::chrono::milliseconds deadline) = 0;

  // Sends `payload` to every peer and returns every pool's payload of `round`
  // indexed by pool index, this pool's own at pool_index(). Every pool calls
  // Exchange with the same increasing sequence of rounds (gaps allowed); a
  // pool may run ahead by a round, its payload is kept until this pool asks
  // for that round, and payloads of rounds older than `round` are dropped.
  //
  // Returns within `deadline` (plus a few milliseconds):
  //   FailedPrecondition  a peer refused the link, or we refused it (another
  //                       protocol version, job id or pool count; the message
  //                       names both sides' values);
  //   DeadlineExceeded /  a peer did not deliver its payload or acknowledge
  //   Unavailable         ours in time (Unavailable: no stream to it is up);
  //                       the message names the peer and how far it got;
  //   InvalidArgument     `round` is not above the last completed round, or
  //                       repeats a failed round with another payload.
  // After a failure the same round may be retried with the same payload:
  // frames the peers already acknowledged are not sent again.
  virtual absl::StatusOr<std::vector<std::string>> Exchange(uint64_t round,
                                                            absl::string_view payload,
                                                            std::chrono::milliseconds deadline) = 0;

  virtual LinkStats Stats() const = 0;

  // One entry per peer (every pool but this one), in pool order.
  virtual std::vector<PeerHealth> Peers() const = 0;

  // Publishes this pool's progress to its peers (see PeerHealth): `units`
  // counts the work its training loop has done and must not decrease;
  // `recent_unit` is the longest time one unit took it recently.
  virtual void ReportProgress(uint64_t units, std::chrono::milliseconds recent_unit) = 0;
};

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_LINK_H_
