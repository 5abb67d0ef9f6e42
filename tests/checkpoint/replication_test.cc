#include "checkpoint/replication.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint_store.h"
#include "checkpoint/digest.h"
#include "tests/support/byte_tensors.h"
#include "transport/tls.h"

namespace tandem {
namespace {

using testing::Owned;
using testing::Pattern;
using testing::Views;

namespace fs = std::filesystem;
using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr auto kDeadline = std::chrono::seconds(30);
constexpr size_t kMiB = size_t{1} << 20;

// ~14 MB in six 4 MiB-or-smaller chunks: 4+4+1 MiB, 4 MiB + (1 MiB + 123), 4000.
std::vector<Owned> Model() {
  return {{"layer1.weight", Pattern(9 * kMiB, 1)},
          {"layer2.weight", Pattern(5 * kMiB + 123, 2)},
          {"layer2.bias", Pattern(4000, 3)}};
}

v1::CheckpointManifest Header(const std::string& job, uint64_t step) {
  v1::CheckpointManifest m;
  m.set_job(job);
  m.set_step(step);
  m.set_global_cursor(step * 64);
  return m;
}

std::set<std::string> ChunkSet(const v1::CheckpointManifest& m) {
  std::set<std::string> keys;
  for (const v1::TensorRecord& t : m.tensors()) {
    for (const v1::ChunkRef& c : t.chunks()) keys.insert(c.sha256());
  }
  return keys;
}

// `m` as an older build wrote it, in manifest format 1 or 2: its chunks keyed
// by their SHA-256 (returned in `chunks`, to write first) and no state digest.
// `model` holds the tensors' bytes, in manifest order.
v1::CheckpointManifest AsOlderFormat(v1::CheckpointManifest m, uint32_t format,
                                     const std::vector<Owned>& model,
                                     std::vector<std::pair<std::string, std::string>>* chunks) {
  m.set_format_version(format);
  m.clear_state_digest();
  for (int t = 0; t < m.tensors_size(); ++t) {
    size_t offset = 0;
    for (v1::ChunkRef& ref : *m.mutable_tensors(t)->mutable_chunks()) {
      std::string bytes = model[t].bytes.substr(offset, ref.size());
      offset += ref.size();
      const Hash256 sha = Sha256Of(bytes.data(), bytes.size());
      ref.set_sha256(std::string(reinterpret_cast<const char*>(sha.data()), sha.size()));
      chunks->emplace_back(ref.sha256(), std::move(bytes));
    }
  }
  return m;
}

uint64_t TotalBytes(const std::vector<Owned>& tensors) {
  uint64_t n = 0;
  for (const Owned& t : tensors) n += t.bytes.size();
  return n;
}

// A port on 127.0.0.1 where nothing listens: bound, read, closed.
int DeadPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "cannot bind a socket: " << std::strerror(errno);
  }
  close(fd);
  return ntohs(addr.sin_port);
}

class ReplicationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/tandem_replication_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    root_ = name;
    const std::string tls = root_ + "/tls";
    ASSERT_TRUE(CreateCertificates(tls, {"localhost", "127.0.0.1"}).ok());
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds = ChannelCredentials(tls);
    ASSERT_TRUE(creds.ok()) << creds.status();
    creds_ = *creds;
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server_creds = ServerCredentials(tls);
    ASSERT_TRUE(server_creds.ok()) << server_creds.status();
    server_creds_ = *server_creds;
    source_ = OpenStore("source");
    target_ = OpenStore("target");
    ASSERT_NE(source_, nullptr);
    ASSERT_NE(target_, nullptr);
  }

  void TearDown() override {
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    }
    server_.reset();
    service_.reset();
    source_.reset();
    target_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  std::unique_ptr<CheckpointStore> OpenStore(const std::string& name) {
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store =
        CheckpointStore::Open(root_ + "/" + name);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // Serves `store` over mutual TLS on 127.0.0.1; sets address_.
  void Serve(CheckpointStore& store, ReplicationServiceOptions options = {}) {
    service_ = std::make_unique<ReplicationService>(store, std::move(options));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", server_creds_, &port);
    builder.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
    builder.SetMaxSendMessageSize(kReplicationMaxMessageBytes);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }

  v1::CheckpointManifest SaveAt(CheckpointStore& store, uint64_t step,
                                const std::vector<Owned>& tensors) {
    absl::StatusOr<v1::CheckpointManifest> m = store.Save(Header("job", step), Views(tensors), 0);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : v1::CheckpointManifest();
  }

  absl::StatusOr<ReplicationStats> Push(std::optional<uint64_t> step, uint32_t keep = 0) {
    return PushCheckpoint(*source_, "job", step, address_, creds_, kDeadline, keep);
  }

  // Checks that `store` holds exactly `tensors` at `step`, with the manifest
  // the source committed.
  void ExpectSameCheckpoint(CheckpointStore& store, uint64_t step,
                            const std::vector<Owned>& tensors) {
    absl::StatusOr<Checkpoint> got = store.Load("job", step);
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<v1::CheckpointManifest> want = source_->LoadManifest("job", step);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(got->manifest.SerializeAsString(), want->SerializeAsString());
    EXPECT_EQ(got->manifest.state_digest(), StateDigest(Views(tensors)));
    ASSERT_EQ(got->tensors.size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_EQ(got->tensors[i].name, tensors[i].name);
      EXPECT_TRUE(got->tensors[i].bytes == tensors[i].bytes) << tensors[i].name << " differs";
    }
  }

  std::string root_;
  std::shared_ptr<grpc::ChannelCredentials> creds_;
  std::shared_ptr<grpc::ServerCredentials> server_creds_;
  std::unique_ptr<CheckpointStore> source_;
  std::unique_ptr<CheckpointStore> target_;
  std::unique_ptr<ReplicationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(ReplicationTest, FullPushThenIncrementalPushSendsOnlyChangedChunks) {
  Serve(*target_);
  std::vector<Owned> model = Model();
  const v1::CheckpointManifest first = SaveAt(*source_, 1, model);

  absl::StatusOr<ReplicationStats> full = Push(std::nullopt);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->step, 1u);
  EXPECT_EQ(full->chunks_total, 6u);
  EXPECT_EQ(full->chunks_sent, 6u);
  EXPECT_EQ(full->chunks_skipped, 0u);
  EXPECT_EQ(full->bytes_sent, TotalBytes(model));
  ExpectSameCheckpoint(*target_, 1, model);
  EXPECT_EQ(*target_->LatestStep("job"), 1u);

  // One byte in the second chunk of layer1.weight changes.
  model[0].bytes[5 * kMiB] ^= 0x5a;
  const v1::CheckpointManifest second = SaveAt(*source_, 2, model);
  std::set<std::string> changed = ChunkSet(second);
  for (const std::string& k : ChunkSet(first)) changed.erase(k);
  ASSERT_EQ(changed.size(), 1u);

  absl::StatusOr<ReplicationStats> incremental = Push(2, /*keep=*/1);
  ASSERT_TRUE(incremental.ok()) << incremental.status();
  EXPECT_EQ(incremental->chunks_total, 6u);
  EXPECT_EQ(incremental->chunks_sent, changed.size());
  EXPECT_EQ(incremental->chunks_skipped, 5u);
  EXPECT_EQ(incremental->bytes_sent, 4 * kMiB);
  std::cout << "bytes_sent: full " << full->bytes_sent << " (" << full->seconds
            << " s), incremental " << incremental->bytes_sent << " (" << incremental->seconds
            << " s)\n";
  ExpectSameCheckpoint(*target_, 2, model);
  EXPECT_EQ(*target_->LatestStep("job"), 2u);
  // keep=1 went with the commit: step 1 and the chunk only it used are gone.
  absl::StatusOr<std::vector<v1::CheckpointInfo>> list = target_->List("job");
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].step(), 2u);
  EXPECT_EQ(*target_->CountChunks(), 6u);

  // Pushing what the target has sends nothing and commits again.
  absl::StatusOr<ReplicationStats> again = Push(2, 1);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->chunks_sent, 0u);
  EXPECT_EQ(again->bytes_sent, 0u);
}

TEST_F(ReplicationTest, ResumesAfterACutSendingOnlyTheRemainder) {
  std::atomic<bool> cut{true};
  ReplicationServiceOptions options;
  options.after_chunk_written = [&cut](uint64_t written) {
    if (written == 2 && cut.exchange(false)) {
      return absl::UnavailableError("test: connection cut after 2 chunks");
    }
    return absl::OkStatus();
  };
  Serve(*target_, std::move(options));
  const std::vector<Owned> model = Model();
  SaveAt(*source_, 7, model);

  absl::StatusOr<ReplicationStats> cut_short = Push(7);
  ASSERT_FALSE(cut_short.ok());
  EXPECT_EQ(cut_short.status().code(), absl::StatusCode::kUnavailable) << cut_short.status();
  EXPECT_THAT(cut_short.status().message(), HasSubstr("sending chunks"));
  EXPECT_THAT(cut_short.status().message(), HasSubstr("connection cut"));
  // Two whole chunks landed; nothing was committed.
  EXPECT_EQ(*target_->CountChunks(), 2u);
  EXPECT_EQ(target_->LatestStep("job").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<ReplicationStats> resumed = Push(7);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->chunks_skipped, 2u);
  EXPECT_EQ(resumed->chunks_sent, 4u);
  // The first two chunks (of layer1.weight, in manifest order) are 4 MiB each.
  EXPECT_EQ(resumed->bytes_sent, TotalBytes(model) - 8 * kMiB);
  ExpectSameCheckpoint(*target_, 7, model);
}

TEST_F(ReplicationTest, ChunkDamagedInTransitIsRejectedAndNotWritten) {
  std::atomic<bool> damage{true};
  ReplicationServiceOptions options;
  options.before_verify = [&damage](const std::string&, std::string* bytes) {
    if (damage.exchange(false)) (*bytes)[bytes->size() / 2] ^= 0x01;
  };
  Serve(*target_, std::move(options));
  const std::vector<Owned> model = Model();
  SaveAt(*source_, 3, model);

  absl::StatusOr<ReplicationStats> damaged = Push(3);
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.status().code(), absl::StatusCode::kDataLoss) << damaged.status();
  EXPECT_THAT(damaged.status().message(), HasSubstr("arrived damaged"));
  EXPECT_EQ(*target_->CountChunks(), 0u);
  EXPECT_EQ(target_->LatestStep("job").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<ReplicationStats> retried = Push(3);
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->chunks_sent, 6u);
  ExpectSameCheckpoint(*target_, 3, model);
}

TEST_F(ReplicationTest, DeadPeerFailsWithinTheDeadline) {
  const std::string address = "127.0.0.1:" + std::to_string(DeadPort());
  SaveAt(*source_, 1, Model());
  const auto deadline = std::chrono::seconds(5);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ReplicationStats> stats =
      PushCheckpoint(*source_, "job", std::nullopt, address, creds_, deadline, 0);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(stats.ok());
  EXPECT_THAT(stats.status().code(),
              AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded))
      << stats.status();
  EXPECT_THAT(stats.status().message(), HasSubstr(address));
  EXPECT_LT(elapsed, deadline + std::chrono::seconds(2));
}

TEST_F(ReplicationTest, SilentPeerHitsTheDeadline) {
  // Accepts TCP connections (the kernel's backlog) but never speaks TLS.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string address = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  SaveAt(*source_, 1, Model());

  const auto deadline = std::chrono::milliseconds(500);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ReplicationStats> stats =
      PushCheckpoint(*source_, "job", std::nullopt, address, creds_, deadline, 0);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  close(fd);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kDeadlineExceeded) << stats.status();
  EXPECT_LT(elapsed, deadline + std::chrono::seconds(5));
}

TEST_F(ReplicationTest, PullFetchesOnlyMissingChunks) {
  Serve(*source_);
  std::vector<Owned> model = Model();
  SaveAt(*source_, 1, model);
  absl::StatusOr<ReplicationStats> full =
      PullCheckpoint(*target_, "job", std::nullopt, address_, creds_, kDeadline, 0);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->chunks_sent, 6u);
  EXPECT_EQ(full->bytes_sent, TotalBytes(model));
  ExpectSameCheckpoint(*target_, 1, model);

  model[2].bytes[0] ^= 0x01;  // layer2.bias: one small chunk
  SaveAt(*source_, 2, model);
  absl::StatusOr<ReplicationStats> incremental =
      PullCheckpoint(*target_, "job", 2, address_, creds_, kDeadline, 0);
  ASSERT_TRUE(incremental.ok()) << incremental.status();
  EXPECT_EQ(incremental->chunks_sent, 1u);
  EXPECT_EQ(incremental->bytes_sent, 4000u);
  ExpectSameCheckpoint(*target_, 2, model);

  absl::StatusOr<ReplicationStats> missing =
      PullCheckpoint(*target_, "nojob", std::nullopt, address_, creds_, kDeadline, 0);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
}

TEST_F(ReplicationTest, PutChunksRefusesAStreamEndingInsideAChunk) {
  Serve(*target_);
  const std::string bytes = Pattern(3 * kMiB, 9);
  const Hash256 digest = Blake3Of(bytes.data(), bytes.size());
  const std::string key(reinterpret_cast<const char*>(digest.data()), digest.size());
  auto stub = v1::CheckpointReplication::NewStub(grpc::CreateChannel(address_, creds_));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kDeadline);
  v1::PutChunksSummary summary;
  auto writer = stub->PutChunks(&context, &summary);
  v1::ChunkData frame;
  frame.set_sha256(key);
  frame.set_offset(0);
  frame.set_data(bytes.substr(0, kMiB));
  ASSERT_TRUE(writer->Write(frame));
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("ended inside chunk"));
  EXPECT_EQ(*target_->CountChunks(), 0u);
}

TEST_F(ReplicationTest, CommitManifestVerifiesChunksAndDigest) {
  const std::vector<Owned> model = Model();
  const v1::CheckpointManifest manifest = SaveAt(*source_, 4, model);

  absl::StatusOr<v1::CheckpointManifest> commit = target_->CommitManifest(manifest, 0);
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kFailedPrecondition) << commit.status();
  EXPECT_THAT(commit.status().message(), HasSubstr("is missing"));
  EXPECT_THAT(commit.status().message(), HasSubstr("layer1.weight"));

  const std::set<std::string> key_set = ChunkSet(manifest);
  const std::vector<std::string> keys(key_set.begin(), key_set.end());
  absl::StatusOr<std::vector<std::string>> missing = target_->MissingChunks(keys);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(missing->size(), 6u);
  std::vector<std::pair<std::string, std::string>> chunks;
  for (const std::string& k : keys) {
    absl::StatusOr<std::string> bytes = source_->ReadChunk(k);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    chunks.emplace_back(k, *bytes);
  }
  // A chunk whose bytes do not match its key is refused, and nothing is written.
  std::vector<std::pair<std::string, std::string>> bad = chunks;
  bad.back().second[0] ^= 0x01;
  absl::Status s = target_->WriteChunks(bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(*target_->CountChunks(), 0u);
  ASSERT_TRUE(target_->WriteChunks(chunks).ok());
  EXPECT_TRUE(target_->MissingChunks(keys)->empty());

  v1::CheckpointManifest wrong_digest = manifest;
  wrong_digest.set_state_digest(std::string(64, '0'));
  commit = target_->CommitManifest(wrong_digest, 0);
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kDataLoss) << commit.status();
  EXPECT_THAT(commit.status().message(), HasSubstr("state digest"));
  EXPECT_EQ(target_->LatestStep("job").status().code(), absl::StatusCode::kNotFound);

  commit = target_->CommitManifest(manifest, 0);
  ASSERT_TRUE(commit.ok()) << commit.status();
  ExpectSameCheckpoint(*target_, 4, model);

  // A manifest of format 1 or 2 (from an older build) has chunks keyed by
  // SHA-256 and is checked by its own format's digest definition, and only by
  // that one; its chunks share the store with format 3's.
  uint64_t step = 5;
  for (uint32_t format : {1u, 2u}) {
    SCOPED_TRACE(format);
    std::vector<std::pair<std::string, std::string>> sha_chunks;
    v1::CheckpointManifest older = AsOlderFormat(manifest, format, model, &sha_chunks);
    older.set_step(step);
    older.set_state_digest(manifest.state_digest());
    ASSERT_TRUE(target_->WriteChunks(sha_chunks).ok());
    commit = target_->CommitManifest(older, 0);
    EXPECT_EQ(commit.status().code(), absl::StatusCode::kDataLoss) << commit.status();
    EXPECT_THAT(commit.status().message(), HasSubstr("state digest"));
    older.set_state_digest(format == 1 ? StateDigestV1(Views(model))
                                       : StateDigest(Views(model), 2));
    commit = target_->CommitManifest(older, 0);
    ASSERT_TRUE(commit.ok()) << commit.status();
    absl::StatusOr<Checkpoint> loaded = target_->Load("job", step);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->manifest.format_version(), format);
    EXPECT_TRUE(target_->Verify("job", step).ok());
    ++step;
  }

  // Format 2's chunks are checked by SHA-256: the same manifest with the
  // BLAKE3 keys of format 3 does not commit.
  v1::CheckpointManifest mixed = manifest;
  mixed.set_step(step);
  mixed.set_format_version(2);
  mixed.set_state_digest(StateDigest(Views(model), 2));
  commit = target_->CommitManifest(mixed, 0);
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kDataLoss) << commit.status();
  EXPECT_THAT(commit.status().message(), HasSubstr("fails its SHA-256 check"));
}

// Chunks a push wrote wait for their manifest: while the store is open,
// garbage collection keeps them even when the checkpoint it drops was their
// only other user; a writable reopening drops those no manifest references.
TEST_F(ReplicationTest, PushedChunksWaitForTheirManifestUntilTheStoreIsReopened) {
  const std::vector<Owned> model = Model();
  const v1::CheckpointManifest manifest = SaveAt(*source_, 1, model);
  const std::set<std::string> keys = ChunkSet(manifest);
  std::vector<std::pair<std::string, std::string>> chunks;
  for (const std::string& k : keys) chunks.emplace_back(k, *source_->ReadChunk(k));

  // The target's own job "other" holds the same tensors; the push sends them
  // anyway (as it does to replace chunks the target found damaged).
  ASSERT_TRUE(target_->Save(Header("other", 1), Views(model), 1).ok());
  ASSERT_TRUE(target_->WriteChunks(chunks).ok());
  // Dropping other@1 leaves no manifest that references them.
  const std::vector<Owned> next = {{"w", Pattern(4000, 77)}};
  ASSERT_TRUE(target_->Save(Header("other", 2), Views(next), 1).ok());
  EXPECT_EQ(*target_->CountChunks(), keys.size() + 1);
  absl::StatusOr<v1::CheckpointManifest> committed = target_->CommitManifest(manifest, 0);
  ASSERT_TRUE(committed.ok()) << committed.status();
  ExpectSameCheckpoint(*target_, 1, model);

  // A chunk of a push that never commits stays while the store is open...
  const std::string stray = Pattern(kMiB, 78);
  const Hash256 digest = Blake3Of(stray.data(), stray.size());
  const std::string stray_key(reinterpret_cast<const char*>(digest.data()), digest.size());
  ASSERT_TRUE(target_->WriteChunks({{stray_key, stray}}).ok());
  ASSERT_TRUE(target_->Save(Header("other", 3), Views(next), 1).ok());
  EXPECT_EQ(*target_->CountChunks(), keys.size() + 2);
  // ...and is dropped when it is reopened, unlike the committed ones.
  target_.reset();
  target_ = OpenStore("target");
  ASSERT_NE(target_, nullptr);
  EXPECT_EQ(*target_->CountChunks(), keys.size() + 1);
  EXPECT_EQ(target_->ReadChunk(stray_key).status().code(), absl::StatusCode::kNotFound);
  ExpectSameCheckpoint(*target_, 1, model);
}

}  // namespace
}  // namespace tandem
