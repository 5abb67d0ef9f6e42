// JobStoresService: an agent's CheckpointReplication service for its cloud's
// per-job stores (STORE/<job id>). Every call names its job in the
// kReplicationJobMetadata header (PushCheckpoint and PullCheckpoint send it);
// the call is served by a ReplicationService over that job's store.
//
// A job's store is written by its running pool leader, which holds RocksDB's
// lock. Reads (GetManifest, MissingChunks, FetchChunks) then go to a fresh
// read-only view; writes (a push into this cloud: PutChunks, CommitManifest)
// need the store for writing and get Unavailable while a pool of that job runs
// here. A store opened for writing stays open across the calls of one push
// (chunks are kept only while it is open) until Release(job).
//
// Thread-safe.
#ifndef TANDEM_COORDINATOR_JOB_STORES_SERVICE_H_
#define TANDEM_COORDINATOR_JOB_STORES_SERVICE_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/replication.h"

namespace tandem {

class JobStoresService final : public v1::CheckpointReplication::Service {
 public:
  explicit JobStoresService(std::string root) : root_(std::move(root)) {}

  // Closes the job's store if this service holds it open for writing (before
  // a pool of the job starts here and opens it itself).
  void Release(const std::string& job);

  grpc::Status GetManifest(grpc::ServerContext* context, const v1::GetManifestRequest* request,
                           v1::CheckpointManifest* response) override;
  grpc::Status MissingChunks(grpc::ServerContext* context, const v1::MissingChunksRequest* request,
                             v1::MissingChunksResponse* response) override;
  grpc::Status PutChunks(grpc::ServerContext* context, grpc::ServerReader<v1::ChunkData>* reader,
                         v1::PutChunksSummary* response) override;
  grpc::Status FetchChunks(grpc::ServerContext* context, const v1::MissingChunksRequest* request,
                           grpc::ServerWriter<v1::ChunkData>* writer) override;
  grpc::Status CommitManifest(grpc::ServerContext* context, const v1::CheckpointManifest* request,
                              v1::CommitManifestResponse* response) override;

 private:
  struct Entry {
    std::unique_ptr<CheckpointStore> store;
    std::unique_ptr<ReplicationService> service;
  };
  // The job the call names, checked to be a job id (no path tricks).
  absl::StatusOr<std::string> JobOf(grpc::ServerContext* context) const;
  // For reads: the open writable entry if any, else a fresh read-only view.
  absl::StatusOr<std::shared_ptr<Entry>> ForReading(grpc::ServerContext* context);
  absl::StatusOr<std::shared_ptr<Entry>> ForWriting(grpc::ServerContext* context);
  // Opens the job's store with `options`; `failure` words the error.
  absl::StatusOr<std::shared_ptr<Entry>> OpenEntry(const std::string& job,
                                                   const CheckpointStoreOptions& options,
                                                   const char* failure);

  const std::string root_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Entry>> writable_;  // guarded by mutex_
};

}  // namespace tandem

#endif  // TANDEM_COORDINATOR_JOB_STORES_SERVICE_H_
