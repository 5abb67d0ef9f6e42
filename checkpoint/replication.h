// Checkpoint replication between clouds. ReplicationService serves one
// cloud's CheckpointStore over the CheckpointReplication gRPC service;
// PushCheckpoint (and PullCheckpoint) move one checkpoint to (from) a peer,
// sending only the chunks the receiver lacks and committing it there only
// after the receiver has verified every chunk and the state digest.
//
// The caller supplies the gRPC credentials (transport/tls.h makes mutual-TLS
// ones), so that this library does not depend on the transport.
//
// A push interrupted anywhere leaves the receiver's previous checkpoints as
// they were: chunks that arrived whole and verified are kept while the
// receiving store stays open, so calling PushCheckpoint again sends only what
// is still missing; the manifest and the job's `latest` pointer move only in
// the final commit. If the receiver's store is reopened before that commit,
// its Open drops the uncommitted chunks and the next push sends them again.
#ifndef TANDEM_CHECKPOINT_REPLICATION_H_
#define TANDEM_CHECKPOINT_REPLICATION_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>
#include <grpcpp/support/sync_stream.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_store.h"
#include "tandem/v1/checkpoint.grpc.pb.h"

namespace tandem {

// Chunks travel in ChunkData frames of at most this many payload bytes.
inline constexpr size_t kReplicationFrameBytes = size_t{1} << 20;
// The largest chunk a receiver assembles; a stream announcing a bigger one is
// refused (InvalidArgument) rather than buffered.
inline constexpr size_t kReplicationMaxChunkBytes = size_t{64} << 20;
// Manifests of large models exceed gRPC's default 4 MiB message limit; a
// server hosting ReplicationService should allow this much
// (ServerBuilder::SetMaxReceiveMessageSize / SetMaxSendMessageSize). Push and
// Pull set it on their own channels.
inline constexpr int kReplicationMaxMessageBytes = 64 << 20;
// Client metadata on CommitManifest: how many checkpoints of the job the
// receiver keeps (as CheckpointStore::Save's `keep`), in decimal. The proto
// has no field for it.
inline constexpr char kReplicationKeepMetadata[] = "tandem-keep";
// Client metadata on every call of PushCheckpoint and PullCheckpoint: the job
// the call is about. A server holding one store per job (an agent) routes by
// it; ReplicationService ignores it.
inline constexpr char kReplicationJobMetadata[] = "tandem-job";

struct ReplicationServiceOptions {
  // Retention for a CommitManifest that carries no kReplicationKeepMetadata.
  uint32_t default_keep = 0;

  // Fault injection for tests; both may be called from several RPCs at once.
  // Called after PutChunks has written each chunk, with how many chunks this
  // call has written so far; a non-OK status ends the call with that status
  // (as if the connection were cut there).
  std::function<absl::Status(uint64_t chunks_written)> after_chunk_written;
  // Called on each chunk PutChunks has assembled, before it is verified; may
  // change the bytes (damage in transit).
  std::function<void(const std::string& sha256, std::string* bytes)> before_verify;
};

// Serves `store` (not owned; must outlive the service) to peers. Thread-safe.
// Errors reach the peer as the gRPC status of the matching absl code:
// GetManifest NotFound for a missing job or step; PutChunks InvalidArgument
// for frames out of order and DataLoss for a chunk whose bytes do not hash to
// its key (nothing of it is written); CommitManifest as
// CheckpointStore::CommitManifest (FailedPrecondition for a missing chunk).
class ReplicationService final : public v1::CheckpointReplication::Service {
 public:
  explicit ReplicationService(CheckpointStore& store, ReplicationServiceOptions options = {});

  // step 0 means latest.
  grpc::Status GetManifest(grpc::ServerContext* context, const v1::GetManifestRequest* request,
                           v1::CheckpointManifest* response) override;
  grpc::Status MissingChunks(grpc::ServerContext* context, const v1::MissingChunksRequest* request,
                             v1::MissingChunksResponse* response) override;
  // Assembles each chunk from its frames (offsets in order, the last frame
  // marked `last`), verifies its hash and writes it (synced) before reading
  // the next, so a cut loses at most the chunk in flight.
  grpc::Status PutChunks(grpc::ServerContext* context, grpc::ServerReader<v1::ChunkData>* reader,
                         v1::PutChunksSummary* response) override;
  // Streams the requested chunks (verified as read) in frames of at most
  // kReplicationFrameBytes. NotFound for a chunk the store lacks.
  grpc::Status FetchChunks(grpc::ServerContext* context, const v1::MissingChunksRequest* request,
                           grpc::ServerWriter<v1::ChunkData>* writer) override;
  grpc::Status CommitManifest(grpc::ServerContext* context, const v1::CheckpointManifest* request,
                              v1::CommitManifestResponse* response) override;

 private:
  CheckpointStore* store_;
  ReplicationServiceOptions options_;
};

struct ReplicationStats {
  uint64_t step = 0;            // the step replicated
  uint64_t chunks_total = 0;    // distinct chunks the checkpoint references
  uint64_t chunks_sent = 0;     // chunks that crossed the wire
  uint64_t bytes_sent = 0;      // their payload bytes (frame overhead not counted)
  uint64_t chunks_skipped = 0;  // chunks the receiver already had
  double seconds = 0;           // wall time of the whole call
};

// Sends the checkpoint of `job` at `step` (nullopt = latest) from `source` to
// the ReplicationService at `target_address` ("host:port"): asks which chunks
// the target lacks, streams only those, then commits the manifest there, where
// every chunk and the state digest are verified and `keep` applies as in
// Save. The whole call finishes within `deadline` (every RPC carries it): a
// peer that refuses connections gives Unavailable, one that stops answering
// DeadlineExceeded. Other errors: the source's (NotFound for a missing
// checkpoint, DataLoss for a damaged source chunk) or the target's status
// (see ReplicationService), with a message naming the job, step, target and
// the stage that failed. Call again after a failure to resume.
absl::StatusOr<ReplicationStats> PushCheckpoint(CheckpointStore& source, const std::string& job,
                                                std::optional<uint64_t> step,
                                                const std::string& target_address,
                                                std::shared_ptr<grpc::ChannelCredentials> creds,
                                                std::chrono::milliseconds deadline, uint32_t keep);

// The reverse: fetches the checkpoint of `job` at `step` (nullopt = latest)
// from the ReplicationService at `source_address` into `destination`,
// fetching only the chunks `destination` lacks, verifying each as it arrives
// (DataLoss for a damaged one; it is not written), then committing it locally
// with `keep`. Same deadline and resume behaviour as PushCheckpoint; in the
// stats, "sent" counts what the source sent.
absl::StatusOr<ReplicationStats> PullCheckpoint(CheckpointStore& destination,
                                                const std::string& job,
                                                std::optional<uint64_t> step,
                                                const std::string& source_address,
                                                std::shared_ptr<grpc::ChannelCredentials> creds,
                                                std::chrono::milliseconds deadline, uint32_t keep);

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_REPLICATION_H_
