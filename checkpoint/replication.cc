#include "checkpoint/replication.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/digest.h"

namespace tandem {
namespace {

constexpr size_t kKeyBytes = std::tuple_size<Hash256>::value;
// Hashes per MissingChunks / FetchChunks request: ~0.6 MB of keys, far below
// the message limit, for any number of chunks.
constexpr size_t kHashesPerRequest = 16384;

#define TANDEM_RETURN_IF_ERROR(expr)   \
  do {                                 \
    absl::Status _status = (expr);     \
    if (!_status.ok()) return _status; \
  } while (0)

// absl and gRPC share the canonical status codes, value for value.
grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s, const std::string& context,
                      std::chrono::milliseconds deadline) {
  if (s.ok()) return absl::OkStatus();
  std::string message = absl::StrCat(context, ": ", s.error_message());
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    absl::StrAppend(&message, " (the whole transfer has ", deadline.count(),
                    " ms; the peer is unreachable, stalled or too slow for that)");
  }
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), message);
}

std::string HashPrefix(const std::string& sha256) {
  return ToHex(reinterpret_cast<const uint8_t*>(sha256.data()),
               std::min<size_t>(sha256.size(), 6)) +
         "...";
}

// Rebuilds chunks from ChunkData frames: each chunk's frames arrive in order,
// at consecutive offsets from 0, the final one marked `last`.
class ChunkAssembler {
 public:
  // Takes one frame. Returns true in *complete when it finished a chunk, which
  // is then in sha256() / bytes() until the next call.
  absl::Status Add(v1::ChunkData* frame, bool* complete) {
    *complete = false;
    if (frame->sha256().size() != kKeyBytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("a chunk frame has a %d-byte key; keys are %d-byte hashes",
                          frame->sha256().size(), kKeyBytes));
    }
    if (!in_chunk_) {
      sha256_ = frame->sha256();
      bytes_.clear();
      in_chunk_ = true;
    } else if (frame->sha256() != sha256_) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", HashPrefix(sha256_),
                                                     " ended without its last frame before chunk ",
                                                     HashPrefix(frame->sha256()), " began"));
    }
    if (frame->offset() != bytes_.size()) {
      return absl::InvalidArgumentError(absl::StrFormat("chunk %s: frame at offset %d, expected %d",
                                                        HashPrefix(sha256_), frame->offset(),
                                                        bytes_.size()));
    }
    if (bytes_.size() + frame->data().size() > kReplicationMaxChunkBytes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("chunk %s is larger than the %d bytes a receiver accepts",
                          HashPrefix(sha256_), kReplicationMaxChunkBytes));
    }
    if (bytes_.empty()) {
      bytes_.swap(*frame->mutable_data());
    } else {
      bytes_.append(frame->data());
    }
    if (frame->last()) {
      in_chunk_ = false;
      *complete = true;
    }
    return absl::OkStatus();
  }

  // After the stream ends: an error if it ended inside a chunk.
  absl::Status Finish() const {
    if (!in_chunk_) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("the stream ended inside chunk %s (%d bytes, no last frame); it was not "
                        "written",
                        HashPrefix(sha256_), bytes_.size()));
  }

  const std::string& sha256() const { return sha256_; }
  std::string* bytes() { return &bytes_; }

 private:
  bool in_chunk_ = false;
  std::string sha256_;
  std::string bytes_;
};

// Sends one chunk as frames through `write`, which returns false when the
// stream is broken. Returns the payload bytes written before it broke.
template <typename Write>
uint64_t SendChunk(const std::string& sha256, const std::string& bytes, Write&& write, bool* ok) {
  uint64_t sent = 0;
  size_t offset = 0;
  do {
    const size_t n = std::min(kReplicationFrameBytes, bytes.size() - offset);
    v1::ChunkData frame;
    frame.set_sha256(sha256);
    frame.set_offset(offset);
    frame.set_data(bytes.data() + offset, n);
    frame.set_last(offset + n == bytes.size());
    if (!write(frame)) {
      *ok = false;
      return sent;
    }
    sent += n;
    offset += n;
  } while (offset < bytes.size());
  *ok = true;
  return sent;
}

// A chunk that fails its hash at the receiver came damaged off the wire.
absl::Status WriteReceivedChunk(CheckpointStore& store, const std::string& sha256,
                                std::string* bytes) {
  const size_t size = bytes->size();
  absl::Status s = store.WriteChunks({{sha256, std::move(*bytes)}});
  if (absl::IsInvalidArgument(s)) {
    return absl::DataLossError(absl::StrFormat(
        "chunk %s (%d bytes) arrived damaged: its bytes do not hash to its key; it was not "
        "written",
        HashPrefix(sha256), size));
  }
  return s;
}

// The distinct chunks of `manifest`, in first-use order.
std::vector<std::string> DistinctChunks(const v1::CheckpointManifest& manifest) {
  std::vector<std::string> keys;
  std::unordered_set<std::string> seen;
  for (const v1::TensorRecord& t : manifest.tensors()) {
    for (const v1::ChunkRef& c : t.chunks()) {
      if (seen.insert(c.sha256()).second) keys.push_back(c.sha256());
    }
  }
  return keys;
}

std::shared_ptr<grpc::Channel> NewChannel(const std::string& address,
                                          std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
  args.SetMaxSendMessageSize(kReplicationMaxMessageBytes);
  return grpc::CreateCustomChannel(address, std::move(creds), args);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

ReplicationService::ReplicationService(CheckpointStore& store, ReplicationServiceOptions options)
    : store_(&store), options_(std::move(options)) {}

grpc::Status ReplicationService::GetManifest(grpc::ServerContext* context,
                                             const v1::GetManifestRequest* request,
                                             v1::CheckpointManifest* response) {
  std::optional<uint64_t> step;
  if (request->step() != 0) step = request->step();
  absl::StatusOr<v1::CheckpointManifest> manifest = store_->LoadManifest(request->job(), step);
  if (!manifest.ok()) return ToGrpc(manifest.status());
  *response = *std::move(manifest);
  return grpc::Status::OK;
}

grpc::Status ReplicationService::MissingChunks(grpc::ServerContext* context,
                                               const v1::MissingChunksRequest* request,
                                               v1::MissingChunksResponse* response) {
  const std::vector<std::string> keys(request->sha256().begin(), request->sha256().end());
  absl::StatusOr<std::vector<std::string>> missing = store_->MissingChunks(keys);
  if (!missing.ok()) return ToGrpc(missing.status());
  for (std::string& key : *missing) response->add_sha256(std::move(key));
  return grpc::Status::OK;
}

grpc::Status ReplicationService::PutChunks(grpc::ServerContext* context,
                                           grpc::ServerReader<v1::ChunkData>* reader,
                                           v1::PutChunksSummary* response) {
  ChunkAssembler assembler;
  uint64_t written = 0;
  uint64_t bytes = 0;
  v1::ChunkData frame;
  while (reader->Read(&frame)) {
    bool complete = false;
    absl::Status s = assembler.Add(&frame, &complete);
    if (!s.ok()) return ToGrpc(s);
    if (!complete) continue;
    if (options_.before_verify) options_.before_verify(assembler.sha256(), assembler.bytes());
    const size_t size = assembler.bytes()->size();
    s = WriteReceivedChunk(*store_, assembler.sha256(), assembler.bytes());
    if (!s.ok()) return ToGrpc(s);
    ++written;
    bytes += size;
    if (options_.after_chunk_written) {
      s = options_.after_chunk_written(written);
      if (!s.ok()) return ToGrpc(s);
    }
  }
  if (context->IsCancelled()) {
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        absl::StrFormat("the sender went away after %d whole chunks", written));
  }
  absl::Status s = assembler.Finish();
  if (!s.ok()) return ToGrpc(s);
  response->set_chunks_received(written);
  response->set_bytes_received(bytes);
  return grpc::Status::OK;
}

grpc::Status ReplicationService::FetchChunks(grpc::ServerContext* context,
                                             const v1::MissingChunksRequest* request,
                                             grpc::ServerWriter<v1::ChunkData>* writer) {
  for (const std::string& key : request->sha256()) {
    absl::StatusOr<std::string> bytes = store_->ReadChunk(key);
    if (!bytes.ok()) return ToGrpc(bytes.status());
    bool ok = false;
    SendChunk(
        key, *bytes, [&](const v1::ChunkData& f) { return writer->Write(f); }, &ok);
    if (!ok) return grpc::Status(grpc::StatusCode::CANCELLED, "the receiver went away");
  }
  return grpc::Status::OK;
}

grpc::Status ReplicationService::CommitManifest(grpc::ServerContext* context,
                                                const v1::CheckpointManifest* request,
                                                v1::CommitManifestResponse* response) {
  uint32_t keep = options_.default_keep;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kReplicationKeepMetadata);
  if (it != metadata.end()) {
    const std::string value(it->second.data(), it->second.size());
    if (!absl::SimpleAtoi(value, &keep)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat(kReplicationKeepMetadata, " metadata \"", value,
                                       "\" is not a non-negative number"));
    }
  }
  absl::StatusOr<v1::CheckpointManifest> committed = store_->CommitManifest(*request, keep);
  if (!committed.ok()) return ToGrpc(committed.status());
  response->set_verified(true);
  return grpc::Status::OK;
}

absl::StatusOr<ReplicationStats> PushCheckpoint(CheckpointStore& source, const std::string& job,
                                                std::optional<uint64_t> step,
                                                const std::string& target_address,
                                                std::shared_ptr<grpc::ChannelCredentials> creds,
                                                std::chrono::milliseconds deadline, uint32_t keep) {
  const auto start = std::chrono::steady_clock::now();
  const auto until = std::chrono::system_clock::now() + deadline;
  if (creds == nullptr) return absl::InvalidArgumentError("PushCheckpoint needs credentials");
  absl::StatusOr<v1::CheckpointManifest> manifest = source.LoadManifest(job, step);
  if (!manifest.ok()) return manifest.status();
  const std::string what = absl::StrFormat("pushing the checkpoint of job %s step %d to %s", job,
                                           manifest->step(), target_address);
  std::unique_ptr<v1::CheckpointReplication::Stub> stub =
      v1::CheckpointReplication::NewStub(NewChannel(target_address, std::move(creds)));

  ReplicationStats stats;
  stats.step = manifest->step();
  const std::vector<std::string> chunks = DistinctChunks(*manifest);
  stats.chunks_total = chunks.size();
  std::vector<std::string> missing;
  for (size_t begin = 0; begin < chunks.size(); begin += kHashesPerRequest) {
    const size_t end = std::min(chunks.size(), begin + kHashesPerRequest);
    v1::MissingChunksRequest request;
    for (size_t i = begin; i < end; ++i) request.add_sha256(chunks[i]);
    v1::MissingChunksResponse response;
    grpc::ClientContext context;
    context.set_deadline(until);
    context.AddMetadata(kReplicationJobMetadata, job);
    TANDEM_RETURN_IF_ERROR(FromGrpc(stub->MissingChunks(&context, request, &response),
                                    absl::StrCat(what, ": asking which chunks it lacks"),
                                    deadline));
    for (const std::string& key : response.sha256()) missing.push_back(key);
  }
  stats.chunks_skipped = stats.chunks_total - missing.size();

  if (!missing.empty()) {
    grpc::ClientContext context;
    context.set_deadline(until);
    context.AddMetadata(kReplicationJobMetadata, job);
    v1::PutChunksSummary summary;
    std::unique_ptr<grpc::ClientWriter<v1::ChunkData>> writer = stub->PutChunks(&context, &summary);
    auto write = [&](const v1::ChunkData& f) { return writer->Write(f); };
    bool ok = true;
    for (const std::string& key : missing) {
      absl::StatusOr<std::string> bytes = source.ReadChunk(key);
      if (!bytes.ok()) {
        context.TryCancel();
        (void)writer->Finish();  // the source's error is the one to report
        return absl::Status(bytes.status().code(),
                            absl::StrCat(what, ": reading the source: ", bytes.status().message()));
      }
      stats.bytes_sent += SendChunk(key, *bytes, write, &ok);
      if (!ok) break;
      ++stats.chunks_sent;
    }
    if (ok) writer->WritesDone();
    const grpc::Status s = writer->Finish();
    TANDEM_RETURN_IF_ERROR(FromGrpc(
        s,
        absl::StrFormat("%s: sending chunks (the stream ended after %d of %d chunks were handed "
                        "to it; a retry sends only what the target still lacks)",
                        what, stats.chunks_sent, missing.size()),
        deadline));
    if (!ok || summary.chunks_received() != stats.chunks_sent) {
      return absl::InternalError(
          absl::StrFormat("%s: the target acknowledged %d chunks, %d were sent", what,
                          summary.chunks_received(), stats.chunks_sent));
    }
  }

  v1::CommitManifestResponse response;
  grpc::ClientContext context;
  context.set_deadline(until);
  context.AddMetadata(kReplicationJobMetadata, job);
  context.AddMetadata(kReplicationKeepMetadata, absl::StrCat(keep));
  TANDEM_RETURN_IF_ERROR(FromGrpc(stub->CommitManifest(&context, *manifest, &response),
                                  absl::StrCat(what, ": committing the manifest"), deadline));
  if (!response.verified()) {
    return absl::InternalError(absl::StrCat(what, ": the target did not verify the checkpoint"));
  }
  stats.seconds = SecondsSince(start);
  return stats;
}

absl::StatusOr<ReplicationStats> PullCheckpoint(CheckpointStore& destination,
                                                const std::string& job,
                                                std::optional<uint64_t> step,
                                                const std::string& source_address,
                                                std::shared_ptr<grpc::ChannelCredentials> creds,
                                                std::chrono::milliseconds deadline, uint32_t keep) {
  const auto start = std::chrono::steady_clock::now();
  const auto until = std::chrono::system_clock::now() + deadline;
  if (creds == nullptr) return absl::InvalidArgumentError("PullCheckpoint needs credentials");
  std::unique_ptr<v1::CheckpointReplication::Stub> stub =
      v1::CheckpointReplication::NewStub(NewChannel(source_address, std::move(creds)));
  std::string what =
      absl::StrFormat("pulling the checkpoint of job %s %s from %s", job,
                      step ? absl::StrCat("step ", *step) : "(latest)", source_address);

  v1::CheckpointManifest manifest;
  {
    v1::GetManifestRequest request;
    request.set_job(job);
    request.set_step(step.value_or(0));
    grpc::ClientContext context;
    context.set_deadline(until);
    context.AddMetadata(kReplicationJobMetadata, job);
    TANDEM_RETURN_IF_ERROR(FromGrpc(stub->GetManifest(&context, request, &manifest),
                                    absl::StrCat(what, ": reading the manifest"), deadline));
  }
  if (manifest.job() != job || (step.has_value() && manifest.step() != *step)) {
    return absl::InternalError(absl::StrFormat("%s: the source sent the manifest of job %s step %d",
                                               what, manifest.job(), manifest.step()));
  }
  what = absl::StrFormat("pulling the checkpoint of job %s step %d from %s", job, manifest.step(),
                         source_address);

  ReplicationStats stats;
  stats.step = manifest.step();
  const std::vector<std::string> chunks = DistinctChunks(manifest);
  stats.chunks_total = chunks.size();
  absl::StatusOr<std::vector<std::string>> missing = destination.MissingChunks(chunks);
  if (!missing.ok()) return missing.status();
  stats.chunks_skipped = stats.chunks_total - missing->size();

  for (size_t begin = 0; begin < missing->size(); begin += kHashesPerRequest) {
    const size_t end = std::min(missing->size(), begin + kHashesPerRequest);
    v1::MissingChunksRequest request;
    std::unordered_set<std::string> expected;
    for (size_t i = begin; i < end; ++i) {
      request.add_sha256((*missing)[i]);
      expected.insert((*missing)[i]);
    }
    grpc::ClientContext context;
    context.set_deadline(until);
    context.AddMetadata(kReplicationJobMetadata, job);
    std::unique_ptr<grpc::ClientReader<v1::ChunkData>> reader =
        stub->FetchChunks(&context, request);
    ChunkAssembler assembler;
    v1::ChunkData frame;
    absl::Status failure;
    while (failure.ok() && reader->Read(&frame)) {
      const size_t n = frame.data().size();
      bool complete = false;
      failure = assembler.Add(&frame, &complete);
      if (!failure.ok()) break;
      stats.bytes_sent += n;
      if (!complete) continue;
      if (expected.erase(assembler.sha256()) == 0) {
        failure = absl::InternalError(absl::StrCat("the source sent chunk ",
                                                   HashPrefix(assembler.sha256()),
                                                   ", which was not asked for (or sent it twice)"));
        break;
      }
      failure = WriteReceivedChunk(destination, assembler.sha256(), assembler.bytes());
      if (failure.ok()) ++stats.chunks_sent;
    }
    if (!failure.ok()) {
      context.TryCancel();
      (void)reader->Finish();  // our error is the one to report
      return absl::Status(failure.code(), absl::StrCat(what, ": ", failure.message()));
    }
    TANDEM_RETURN_IF_ERROR(FromGrpc(
        reader->Finish(),
        absl::StrFormat("%s: fetching chunks (%d whole chunks received)", what, stats.chunks_sent),
        deadline));
    TANDEM_RETURN_IF_ERROR(assembler.Finish());
    if (!expected.empty()) {
      return absl::InternalError(absl::StrFormat(
          "%s: the source left out %d of the chunks asked for", what, expected.size()));
    }
  }

  absl::StatusOr<v1::CheckpointManifest> committed = destination.CommitManifest(manifest, keep);
  if (!committed.ok()) {
    return absl::Status(committed.status().code(),
                        absl::StrCat(what, ": committing: ", committed.status().message()));
  }
  stats.seconds = SecondsSince(start);
  return stats;
}

}  // namespace tandem

#undef TANDEM_RETURN_IF_ERROR
