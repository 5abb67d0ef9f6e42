#include "coordinator/job_stores_service.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tandem {
namespace {

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace

void JobStoresService::Release(const std::string& job) {
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = writable_.find(job);
    if (it == writable_.end()) return;
    entry = std::move(it->second);
    writable_.erase(it);
  }
  // Closed here, or by the last call still using it.
}

absl::StatusOr<std::string> JobStoresService::JobOf(grpc::ServerContext* context) const {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kReplicationJobMetadata);
  if (it == metadata.end()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "this agent keeps one store per job: the call must name its job in the %s header",
        kReplicationJobMetadata));
  }
  std::string job(it->second.data(), it->second.size());
  const bool valid =
      !job.empty() && job.size() <= 128 && job != "." && job != ".." &&
      job.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-_.") == std::string::npos;
  if (!valid) return absl::InvalidArgumentError(absl::StrCat("not a job id: ", job));
  return job;
}

absl::StatusOr<std::shared_ptr<JobStoresService::Entry>> JobStoresService::ForReading(
    grpc::ServerContext* context) {
  absl::StatusOr<std::string> job = JobOf(context);
  if (!job.ok()) return job.status();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = writable_.find(*job);
    if (it != writable_.end()) return it->second;
  }
  CheckpointStoreOptions options;
  options.read_only = true;
  options.create_if_missing = false;
  return OpenEntry(*job, options, "has no readable store on this cloud");
}

absl::StatusOr<std::shared_ptr<JobStoresService::Entry>> JobStoresService::ForWriting(
    grpc::ServerContext* context) {
  absl::StatusOr<std::string> job = JobOf(context);
  if (!job.ok()) return job.status();
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = writable_.find(*job);
  if (it != writable_.end()) return it->second;
  absl::StatusOr<std::shared_ptr<Entry>> entry =
      OpenEntry(*job, CheckpointStoreOptions(), "cannot take checkpoints on this cloud");
  if (entry.ok()) writable_[*job] = *entry;
  return entry;
}

absl::StatusOr<std::shared_ptr<JobStoresService::Entry>> JobStoresService::OpenEntry(
    const std::string& job, const CheckpointStoreOptions& options, const char* failure) {
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
      CheckpointStore::Open(root_ + "/" + job, options);
  if (!store.ok()) {
    return absl::Status(store.status().code(), absl::StrFormat("job %s %s: %s", job, failure,
                                                               store.status().message()));
  }
  auto entry = std::make_shared<Entry>();
  entry->store = std::move(*store);
  entry->service = std::make_unique<ReplicationService>(*entry->store);
  return entry;
}

grpc::Status JobStoresService::GetManifest(grpc::ServerContext* context,
                                           const v1::GetManifestRequest* request,
                                           v1::CheckpointManifest* response) {
  absl::StatusOr<std::shared_ptr<Entry>> entry = ForReading(context);
  if (!entry.ok()) return ToGrpc(entry.status());
  return (*entry)->service->GetManifest(context, request, response);
}

grpc::Status JobStoresService::MissingChunks(grpc::ServerContext* context,
                                             const v1::MissingChunksRequest* request,
                                             v1::MissingChunksResponse* response) {
  // Asked by a pusher about to write here: the store it will write.
  absl::StatusOr<std::shared_ptr<Entry>> entry = ForWriting(context);
  if (!entry.ok()) return ToGrpc(entry.status());
  return (*entry)->service->MissingChunks(context, request, response);
}

grpc::Status JobStoresService::PutChunks(grpc::ServerContext* context,
                                         grpc::ServerReader<v1::ChunkData>* reader,
                                         v1::PutChunksSummary* response) {
  absl::StatusOr<std::shared_ptr<Entry>> entry = ForWriting(context);
  if (!entry.ok()) return ToGrpc(entry.status());
  return (*entry)->service->PutChunks(context, reader, response);
}

grpc::Status JobStoresService::FetchChunks(grpc::ServerContext* context,
                                           const v1::MissingChunksRequest* request,
                                           grpc::ServerWriter<v1::ChunkData>* writer) {
  absl::StatusOr<std::shared_ptr<Entry>> entry = ForReading(context);
  if (!entry.ok()) return ToGrpc(entry.status());
  return (*entry)->service->FetchChunks(context, request, writer);
}

grpc::Status JobStoresService::CommitManifest(grpc::ServerContext* context,
                                              const v1::CheckpointManifest* request,
                                              v1::CommitManifestResponse* response) {
  absl::StatusOr<std::shared_ptr<Entry>> entry = ForWriting(context);
  if (!entry.ok()) return ToGrpc(entry.status());
  grpc::Status status = (*entry)->service->CommitManifest(context, request, response);
  if (status.ok()) {
    // The copy is whole: the store goes back to the job's next pool here.
    absl::StatusOr<std::string> job = JobOf(context);
    if (job.ok()) Release(*job);
  }
  return status;
}

}  // namespace tandem
