// The Link contract, run against GrpcLink (real gRPC on 127.0.0.1:0, every
// pool a link object of this process) and InProcessLink; then GrpcLink's own
// guarantees: byte accounting, checksum resends, resume after a broken
// stream, refusals, dead peers and mutual TLS.
#include "transport/link.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "infra/wan_proxy/wan_proxy.h"
#include "transport/grpc_link.h"
#include "transport/in_process_link.h"
#include "transport/tls.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr milliseconds kDeadline{20000};  // for rounds that must succeed
constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;
constexpr size_t kThreeAndHalfMiB = 3 * kMiB + kMiB / 2;

using Result = absl::StatusOr<std::vector<std::string>>;

std::string Bytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

milliseconds Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
}

// Every link's Exchange at once, each from its own thread (Exchange blocks
// until the peers have called it too).
std::vector<Result> ExchangeAll(const std::vector<Link*>& links, uint64_t round,
                                const std::vector<std::string>& payloads,
                                milliseconds deadline = kDeadline) {
  std::vector<Result> results(links.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < links.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = links[i]->Exchange(round, payloads[i], deadline); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

// Every pool must end the round holding every pool's payload.
void ExpectDelivered(const std::vector<Result>& results, const std::vector<std::string>& payloads) {
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << "pool " << i << ": " << results[i].status();
    ASSERT_EQ(results[i]->size(), payloads.size());
    for (size_t p = 0; p < payloads.size(); ++p) {
      EXPECT_TRUE((*results[i])[p] == payloads[p])
          << "pool " << i << " got a wrong payload of pool " << p << " (" << (*results[i])[p].size()
          << " bytes, expected " << payloads[p].size() << ")";
    }
  }
}

// Job ids unique to this process: a test's link may reconnect to a port that
// a test in another process has taken meanwhile, and must be refused there.
std::string JobId(int n) { return "job-" + std::to_string(n) + "." + std::to_string(getpid()); }

GrpcLinkOptions Options(int pool, int pools) {
  GrpcLinkOptions o;
  o.job_id = JobId(1);
  o.cloud = std::string("cloud-") + static_cast<char>('a' + pool);
  o.pool_index = pool;
  o.pool_count = pools;
  o.listen_address = "127.0.0.1:0";
  o.server_credentials = grpc::InsecureServerCredentials();
  o.channel_credentials = grpc::InsecureChannelCredentials();
  o.initial_backoff = milliseconds(10);
  o.max_backoff = milliseconds(200);
  return o;
}

std::string Address(int port) { return "127.0.0.1:" + std::to_string(port); }

// `pools` GrpcLinks on ports of their own, each told the others' addresses.
std::vector<std::unique_ptr<GrpcLink>> MakeGrpcLinks(
    int pools, const std::function<void(GrpcLinkOptions&)>& tweak = nullptr) {
  std::vector<std::unique_ptr<GrpcLink>> links;
  std::vector<std::string> addresses;
  for (int p = 0; p < pools; ++p) {
    GrpcLinkOptions o = Options(p, pools);
    if (tweak) tweak(o);
    absl::StatusOr<std::unique_ptr<GrpcLink>> link = GrpcLink::Create(o);
    EXPECT_TRUE(link.ok()) << link.status();
    if (!link.ok()) return {};
    addresses.push_back(Address((*link)->port()));
    links.push_back(std::move(*link));
  }
  for (auto& link : links) EXPECT_TRUE(link->SetPeers(addresses).ok());
  return links;
}

template <typename T>
std::vector<Link*> Raw(const std::vector<std::unique_ptr<T>>& links) {
  std::vector<Link*> raw;
  for (const auto& l : links) raw.push_back(l.get());
  return raw;
}

// ---------------------------------------------------------------------------
// The contract, for every backend.

enum class Backend { kGrpc, kInProcess };

void PrintTo(Backend backend, std::ostream* os) {
  *os << (backend == Backend::kGrpc ? "Grpc" : "InProcess");
}

class LinkContractTest : public ::testing::TestWithParam<Backend> {
 protected:
  void Make(int pools) {
    links_.clear();
    if (GetParam() == Backend::kGrpc) {
      for (auto& l : MakeGrpcLinks(pools)) links_.push_back(std::move(l));
    } else {
      auto hub = std::make_shared<InProcessHub>(pools);
      for (int p = 0; p < pools; ++p) {
        absl::StatusOr<std::unique_ptr<InProcessLink>> link = InProcessLink::Create(hub, p);
        ASSERT_TRUE(link.ok()) << link.status();
        links_.push_back(std::move(*link));
      }
    }
    ASSERT_EQ(links_.size(), static_cast<size_t>(pools));
  }

  std::vector<std::unique_ptr<Link>> links_;
};

TEST_P(LinkContractTest, ConnectsAndReportsPools) {
  Make(2);
  for (int p = 0; p < 2; ++p) {
    EXPECT_EQ(links_[p]->pool_index(), p);
    EXPECT_EQ(links_[p]->pool_count(), 2);
    absl::Status s = links_[p]->Connect(kDeadline);
    EXPECT_TRUE(s.ok()) << s;
  }
}

TEST_P(LinkContractTest, DeliversEmptyTinyAndMultiFramePayloadsBothWays) {
  Make(2);
  uint64_t round = 1;
  for (size_t size : {size_t{0}, size_t{1}, kThreeAndHalfMiB}) {
    SCOPED_TRACE(size);
    // Each way its own size too: big one way, empty the other.
    const std::vector<std::string> payloads = {Bytes(size, 1), Bytes(size == 1 ? 0 : 1, 2)};
    ExpectDelivered(ExchangeAll(Raw(links_), round++, payloads), payloads);
    const std::vector<std::string> reversed = {payloads[1], payloads[0]};
    ExpectDelivered(ExchangeAll(Raw(links_), round++, reversed), reversed);
  }
}

TEST_P(LinkContractTest, ManyRoundsInARowWithGaps) {
  Make(2);
  std::mt19937 rng(7);
  for (uint64_t step = 1; step <= 40; ++step) {
    // A step round, and every 10 steps a digest round, as the trainer does.
    const uint64_t round = 2 * step;
    const std::vector<std::string> payloads = {Bytes(rng() % (300 * kKiB), rng()),
                                               Bytes(rng() % (300 * kKiB), rng())};
    ExpectDelivered(ExchangeAll(Raw(links_), round, payloads), payloads);
    if (step % 10 == 0) {
      const std::vector<std::string> digests = {Bytes(32, 99), Bytes(32, 99)};
      ExpectDelivered(ExchangeAll(Raw(links_), round + 1, digests), digests);
    }
  }
}

TEST_P(LinkContractTest, ThreePools) {
  Make(3);
  for (uint64_t round = 1; round <= 4; ++round) {
    const std::vector<std::string> payloads = {Bytes(round == 2 ? 2 * kMiB + 5 : 1000, 10 + round),
                                               Bytes(0, 0), Bytes(round * 70 * kKiB, 20 + round)};
    ExpectDelivered(ExchangeAll(Raw(links_), round, payloads), payloads);
  }
}

TEST_P(LinkContractTest, RoundsMustIncrease) {
  Make(2);
  const std::vector<std::string> payloads = {"a", "b"};
  ExpectDelivered(ExchangeAll(Raw(links_), 5, payloads), payloads);
  for (uint64_t round : {uint64_t{5}, uint64_t{3}}) {
    Result r = links_[0]->Exchange(round, "a", milliseconds(100));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("not above the last completed round 5"));
  }
}

// A pool that does not show up: the deadline fires, naming it; the round can
// then be retried with the same payload (the peer buffered it meanwhile), but
// not with another.
TEST_P(LinkContractTest, AbsentPeerTimesOutAndTheRoundCanBeRetried) {
  Make(2);
  const std::vector<std::string> payloads = {Bytes(2 * kMiB, 3), Bytes(1000, 4)};
  const milliseconds deadline(300);
  const auto start = std::chrono::steady_clock::now();
  Result alone = links_[0]->Exchange(1, payloads[0], deadline);
  const milliseconds elapsed = Since(start);
  EXPECT_THAT(alone.status().code(),
              AnyOf(absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kUnavailable))
      << alone.status();
  EXPECT_THAT(alone.status().message(), HasSubstr("pool 1"));
  EXPECT_GE(elapsed, deadline);
  EXPECT_LT(elapsed, deadline + milliseconds(2000));

  Result changed = links_[0]->Exchange(1, "something else", deadline);
  EXPECT_EQ(changed.status().code(), absl::StatusCode::kInvalidArgument) << changed.status();

  ExpectDelivered(ExchangeAll(Raw(links_), 1, payloads), payloads);
}

TEST_P(LinkContractTest, PeerThatLeftFailsTheRoundWithinTheDeadline) {
  Make(2);
  const std::vector<std::string> payloads = {Bytes(1000, 5), Bytes(1000, 6)};
  ExpectDelivered(ExchangeAll(Raw(links_), 1, payloads), payloads);
  const milliseconds deadline(1000);
  Result result = absl::UnknownError("not run");
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::thread survivor(
      [&] { result = links_[0]->Exchange(2, Bytes(kThreeAndHalfMiB, 7), deadline); });
  links_[1].reset();  // possibly while frames are on their way to it
  survivor.join();
  EXPECT_THAT(result.status().code(),
              AnyOf(absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kUnavailable))
      << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("pool 1"));
  EXPECT_LT(Since(start), deadline + milliseconds(2000));
}

// Polls `holds` until it is true or `deadline` passes; returns whether it held.
bool Eventually(const std::function<bool()>& holds, milliseconds deadline = milliseconds(10000)) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!holds()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return true;
}

TEST_P(LinkContractTest, AnIdlePeerStaysAliveAndItsProgressArrives) {
  Make(2);
  ASSERT_TRUE(links_[0]->Connect(kDeadline).ok());
  ASSERT_TRUE(links_[1]->Connect(kDeadline).ok());
  links_[1]->ReportProgress(7, milliseconds(300));
  ASSERT_TRUE(Eventually([&] { return links_[0]->Peers()[0].progress == 7; }))
      << "the peer's progress never arrived";
  PeerHealth peer = links_[0]->Peers()[0];
  EXPECT_EQ(peer.pool, 1);
  EXPECT_EQ(peer.recent_unit, milliseconds(300));
  EXPECT_TRUE(peer.delivered) << "no round is in flight";
  // Nobody exchanges for several heartbeat intervals (until the progress is
  // 1.5 s old by the link's own clock): the peer is still heard from.
  ASSERT_TRUE(Eventually([&] {
    peer = links_[0]->Peers()[0];
    return peer.progress_unchanged_for >= milliseconds(1500);
  }));
  EXPECT_LT(peer.silent_for, milliseconds(1200)) << "an idle peer went silent";
  EXPECT_EQ(peer.progress, 7u);
}

TEST_P(LinkContractTest, PeersTellsWhoHasNotDeliveredTheRoundInFlight) {
  Make(2);
  const std::vector<std::string> payloads = {Bytes(100, 1), Bytes(100, 2)};
  Result early = links_[0]->Exchange(1, payloads[0], milliseconds(200));
  ASSERT_FALSE(early.ok());
  EXPECT_FALSE(links_[0]->Peers()[0].delivered);
  ExpectDelivered(ExchangeAll(Raw(links_), 1, payloads), payloads);
  EXPECT_TRUE(links_[0]->Peers()[0].delivered);
}

TEST_P(LinkContractTest, APeerThatLeftGoesSilent) {
  Make(2);
  const std::vector<std::string> payloads = {Bytes(10, 1), Bytes(10, 2)};
  ExpectDelivered(ExchangeAll(Raw(links_), 1, payloads), payloads);
  links_[1].reset();
  PeerHealth peer;
  ASSERT_TRUE(Eventually([&] {
    peer = links_[0]->Peers()[0];
    return peer.silent_for >= milliseconds(1000);
  })) << "silent_for of a peer that left stays at " << peer.silent_for.count() << " ms";
  EXPECT_TRUE(Eventually([&] { return links_[0]->Peers()[0].streams_up == 0; }));
}

INSTANTIATE_TEST_SUITE_P(Backends, LinkContractTest,
                         ::testing::Values(Backend::kGrpc, Backend::kInProcess),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kGrpc ? "Grpc" : "InProcess";
                         });

// ---------------------------------------------------------------------------
// GrpcLink.

// The WAN between two leaders cut by the proxy: the TCP connections stay up
// but nothing crosses, so the peer goes silent within the liveness window
// (instead of an exchange deadline) and is heard again once the path heals.
TEST(GrpcLinkTest, APartitionedPeerGoesSilentAndIsHeardAgainWhenThePathHeals) {
  auto links = MakeGrpcLinks(2);
  ASSERT_EQ(links.size(), 2u);
  // Each pool reaches the other through a proxy of its own (the WAN).
  std::vector<std::unique_ptr<infra::WanProxy>> proxies;
  for (int p = 0; p < 2; ++p) {
    infra::WanProxyOptions options;
    options.target = Address(links[p]->port());
    absl::StatusOr<std::unique_ptr<infra::WanProxy>> proxy = infra::WanProxy::Start(options);
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxies.push_back(std::move(*proxy));
  }
  const std::vector<std::string> via = {proxies[0]->listen_address(),
                                        proxies[1]->listen_address()};
  for (auto& link : links) ASSERT_TRUE(link->SetPeers(via).ok());
  const std::vector<std::string> payloads = {Bytes(10, 1), Bytes(10, 2)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  for (auto& proxy : proxies) ASSERT_TRUE(proxy->SetPartitioned(true).ok());
  const auto cut = std::chrono::steady_clock::now();
  // The TCP connections stay up, but nothing crosses: the peer goes silent
  // and is found so within a window of 2 s, not at an exchange deadline.
  ASSERT_TRUE(Eventually([&] { return links[0]->Peers()[0].silent_for >= milliseconds(2000); }));
  EXPECT_LT(Since(cut), milliseconds(2000 + 1500));
  for (auto& proxy : proxies) ASSERT_TRUE(proxy->SetPartitioned(false).ok());
  EXPECT_TRUE(Eventually([&] { return links[0]->Peers()[0].silent_for < milliseconds(1000); }))
      << "the healed path brought no sign of life";
  const std::vector<std::string> again = {Bytes(10, 3), Bytes(10, 4)};
  ExpectDelivered(ExchangeAll(Raw(links), 2, again), again);
}

TEST(GrpcLinkTest, ValidatesOptions) {
  GrpcLinkOptions o = Options(0, 2);
  o.frame_bytes = kMaxFrameBytes + 1;
  EXPECT_EQ(GrpcLink::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options(0, 2);
  o.pool_index = 2;
  EXPECT_EQ(GrpcLink::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options(0, 2);
  o.channel_credentials = nullptr;
  EXPECT_EQ(GrpcLink::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = Options(0, 2);
  o.job_id.clear();
  EXPECT_EQ(GrpcLink::Create(o).status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::unique_ptr<GrpcLink>> link = GrpcLink::Create(Options(0, 2));
  ASSERT_TRUE(link.ok()) << link.status();
  EXPECT_GT((*link)->port(), 0);
  EXPECT_EQ((*link)->Exchange(1, "x", milliseconds(100)).status().code(),
            absl::StatusCode::kFailedPrecondition);  // no peers yet
  EXPECT_EQ((*link)->SetPeers({"127.0.0.1:1"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*link)->SetPeers({"", ""}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(GrpcLinkTest, CountsPayloadBytesExactlyAndWireBytesPlausibly) {
  auto links = MakeGrpcLinks(2);
  ASSERT_EQ(links.size(), 2u);
  const std::vector<std::string> payloads = {Bytes(kThreeAndHalfMiB, 1), Bytes(1000, 2)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  const LinkStats a = links[0]->Stats();
  const LinkStats b = links[1]->Stats();
  EXPECT_EQ(a.payload_bytes_sent, kThreeAndHalfMiB);
  EXPECT_EQ(a.payload_bytes_received, 1000u);
  EXPECT_EQ(b.payload_bytes_sent, 1000u);
  EXPECT_EQ(b.payload_bytes_received, kThreeAndHalfMiB);
  // Four frames and hellos one way, acks and hellos back: some tens of bytes each.
  EXPECT_GT(a.wire_bytes_sent, a.payload_bytes_sent);
  EXPECT_LT(a.wire_bytes_sent, a.payload_bytes_sent + 4 * kKiB);
  EXPECT_GT(b.wire_bytes_sent, b.payload_bytes_sent);
  EXPECT_LT(b.wire_bytes_sent, b.payload_bytes_sent + 4 * kKiB);
  for (const LinkStats& s : {a, b}) {
    EXPECT_EQ(s.frames_resent, 0u);
    EXPECT_EQ(s.bad_frames_received, 0u);
    EXPECT_EQ(s.reconnects, 0u);
  }
}

TEST(GrpcLinkTest, SendsTheWholePayloadToEachPeer) {
  auto links = MakeGrpcLinks(3);
  ASSERT_EQ(links.size(), 3u);
  const std::vector<std::string> payloads = {Bytes(kThreeAndHalfMiB, 1), Bytes(10, 2),
                                             Bytes(20, 3)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  EXPECT_EQ(links[0]->Stats().payload_bytes_sent, 2 * kThreeAndHalfMiB);
  EXPECT_EQ(links[0]->Stats().payload_bytes_received, 30u);
  EXPECT_EQ(links[1]->Stats().payload_bytes_received, kThreeAndHalfMiB + 20);
}

TEST(GrpcLinkTest, RetriedRoundDoesNotResendAcknowledgedFrames) {
  auto links = MakeGrpcLinks(2);
  ASSERT_EQ(links.size(), 2u);
  const std::vector<std::string> payloads = {Bytes(2 * kMiB, 3), Bytes(1000, 4)};
  Result alone = links[0]->Exchange(1, payloads[0], milliseconds(300));
  ASSERT_FALSE(alone.ok());
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  EXPECT_EQ(links[0]->Stats().payload_bytes_sent, 2 * kMiB);
  EXPECT_EQ(links[0]->Stats().frames_resent, 0u);
}

TEST(GrpcLinkTest, CorruptFrameIsRefusedAndResent) {
  auto links = MakeGrpcLinks(2, [](GrpcLinkOptions& o) {
    if (o.pool_index == 0) o.testing.corrupt_frame = 2;
  });
  ASSERT_EQ(links.size(), 2u);
  const std::vector<std::string> payloads = {Bytes(4 * kMiB, 8), Bytes(100, 9)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  const LinkStats a = links[0]->Stats();
  EXPECT_EQ(a.frames_resent, 1u);
  EXPECT_EQ(a.payload_bytes_sent, 4 * kMiB + kMaxFrameBytes);
  EXPECT_EQ(links[1]->Stats().bad_frames_received, 1u);
  EXPECT_EQ(links[1]->Stats().payload_bytes_received, 4 * kMiB);
}

// A stream breaks after the 20th of 56 frames, losing the acks in flight on
// it. Only that stream's unacknowledged frames (at most the window of 4) are
// sent again; the stream is reconnected.
TEST(GrpcLinkTest, CutStreamResumesWithoutResendingAcknowledgedFrames) {
  constexpr size_t kFrame = 64 * kKiB;
  constexpr int kWindow = 4;
  auto links = MakeGrpcLinks(2, [&](GrpcLinkOptions& o) {
    o.frame_bytes = kFrame;
    o.max_unacked_frames_per_stream = kWindow;
    if (o.pool_index == 0) o.testing.cut_after_frames = 20;
  });
  ASSERT_EQ(links.size(), 2u);
  const std::vector<std::string> payloads = {Bytes(kThreeAndHalfMiB, 10), Bytes(3000, 11)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  const LinkStats a = links[0]->Stats();
  EXPECT_GE(a.frames_resent, 1u);
  EXPECT_LE(a.frames_resent, static_cast<uint64_t>(kWindow));
  EXPECT_EQ(a.payload_bytes_sent, kThreeAndHalfMiB + a.frames_resent * kFrame);
  EXPECT_LT(a.payload_bytes_sent, 2 * kThreeAndHalfMiB);
  // Duplicates are acknowledged, not counted again.
  EXPECT_EQ(links[1]->Stats().payload_bytes_received, kThreeAndHalfMiB);

  absl::Status connected = links[0]->Connect(kDeadline);
  ASSERT_TRUE(connected.ok()) << connected;
  EXPECT_EQ(links[0]->Stats().reconnects, 1u);
  // And the link goes on.
  const std::vector<std::string> next = {Bytes(kMiB, 12), Bytes(kMiB, 13)};
  ExpectDelivered(ExchangeAll(Raw(links), 2, next), next);
}

// Pool 1 fails mid-round, having stored all of pool 0's payload and sent part
// of its own, and comes back as a new process (at a new address) with another
// payload for the same round. Pool 0 must send everything again, and must not
// mix the old incarnation's frames into the new payload.
TEST(GrpcLinkTest, RestartedPeerStartsTheRoundOver) {
  constexpr size_t kFrame = 64 * kKiB;
  auto links = MakeGrpcLinks(2, [&](GrpcLinkOptions& o) {
    if (o.pool_index != 1) return;
    o.frame_bytes = kFrame;
    o.streams_per_peer = 1;
    // Frame 5 leaves only once frames 1-3 are acknowledged, that is stored
    // by pool 0; then the stream breaks and stays down until pool 1 is gone.
    o.max_unacked_frames_per_stream = 2;
    o.testing.cut_after_frames = 5;
    o.initial_backoff = milliseconds(60000);
    o.max_backoff = milliseconds(60000);
  });
  ASSERT_EQ(links.size(), 2u);
  const std::string a = Bytes(2 * kMiB, 1);
  std::vector<Result> failed = ExchangeAll(Raw(links), 1, {a, Bytes(kMiB, 2)}, milliseconds(500));
  for (const Result& r : failed) EXPECT_FALSE(r.ok());
  EXPECT_EQ(links[1]->Stats().payload_bytes_received, 2 * kMiB);
  EXPECT_GE(links[0]->Stats().payload_bytes_received, 3 * kFrame);

  links[1].reset();
  absl::StatusOr<std::unique_ptr<GrpcLink>> restarted = GrpcLink::Create(Options(1, 2));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  links[1] = std::move(*restarted);
  const std::vector<std::string> addresses = {Address(links[0]->port()), Address(links[1]->port())};
  for (auto& link : links) ASSERT_TRUE(link->SetPeers(addresses).ok());

  const std::vector<std::string> payloads = {a, Bytes(kMiB, 3)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
  EXPECT_EQ(links[0]->Stats().frames_resent, 2u);
  EXPECT_EQ(links[0]->Stats().payload_bytes_sent, 2 * 2 * kMiB);
  EXPECT_EQ(links[1]->Stats().payload_bytes_received, 2 * kMiB);
}

TEST(GrpcLinkTest, PeerOfAnotherJobIsRefusedNamingBothJobs) {
  auto links = MakeGrpcLinks(2, [](GrpcLinkOptions& o) {
    if (o.pool_index == 1) o.job_id = JobId(2);
  });
  ASSERT_EQ(links.size(), 2u);
  const auto start = std::chrono::steady_clock::now();
  std::vector<Result> results = ExchangeAll(Raw(links), 1, {"a", "b"});
  for (const Result& r : results) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("job id mismatch"));
    EXPECT_THAT(r.status().message(), HasSubstr("'" + JobId(1) + "'"));
    EXPECT_THAT(r.status().message(), HasSubstr("'" + JobId(2) + "'"));
  }
  EXPECT_LT(Since(start), kDeadline / 2);  // a refusal, not a timeout
  EXPECT_EQ(links[0]->Connect(kDeadline).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(GrpcLinkTest, PeerOfAnotherProtocolVersionIsRefused) {
  auto links = MakeGrpcLinks(2, [](GrpcLinkOptions& o) {
    if (o.pool_index == 1) o.testing.protocol_version = kExchangeProtocolVersion + 1;
  });
  ASSERT_EQ(links.size(), 2u);
  std::vector<Result> results = ExchangeAll(Raw(links), 1, {"a", "b"});
  for (const Result& r : results) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("protocol version"));
    EXPECT_THAT(r.status().message(),
                HasSubstr("version " + std::to_string(kExchangeProtocolVersion + 1)));
  }
}

TEST(GrpcLinkTest, AddressNobodyListensOnFailsWithinTheDeadline) {
  // A port held (bound, not listening) for the whole test, so no other test
  // process can start a server there: connecting to it is refused.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int dead_port = ntohs(addr.sin_port);
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};

  GrpcLinkOptions o = Options(0, 2);
  o.peer_addresses = {"", Address(dead_port)};
  absl::StatusOr<std::unique_ptr<GrpcLink>> link = GrpcLink::Create(o);
  ASSERT_TRUE(link.ok()) << link.status();

  const milliseconds deadline(500);
  auto start = std::chrono::steady_clock::now();
  absl::Status connect = (*link)->Connect(deadline);
  EXPECT_EQ(connect.code(), absl::StatusCode::kUnavailable) << connect;
  EXPECT_LT(Since(start), deadline + milliseconds(2000));

  start = std::chrono::steady_clock::now();
  Result r = (*link)->Exchange(1, Bytes(kMiB, 1), deadline);
  const milliseconds elapsed = Since(start);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("pool 1"));
  EXPECT_THAT(r.status().message(), HasSubstr(Address(dead_port)));
  // Four data streams and the control stream.
  EXPECT_THAT(r.status().message(), HasSubstr("0 of 5 streams up"));
  EXPECT_GE(elapsed, deadline);
  EXPECT_LT(elapsed, deadline + milliseconds(2000));
}

class GrpcLinkTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/tandem_link_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    root_ = name;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Certificates for 127.0.0.1 in root_/name; from the CA of root_/ca_from
  // if given, else from a CA of their own.
  std::string Certs(const std::string& name, const std::string& ca_from = "") {
    const std::string dir = root_ + "/" + name;
    if (!ca_from.empty()) {
      fs::create_directories(dir);
      for (const char* f : {kTlsCaCertFile, kTlsCaKeyFile}) {
        fs::copy_file(root_ + "/" + ca_from + "/" + f, dir + "/" + f);
      }
    }
    absl::Status s = CreateCertificates(dir, {"127.0.0.1", "localhost"});
    EXPECT_TRUE(s.ok()) << s;
    return dir;
  }

  std::function<void(GrpcLinkOptions&)> Tls(const std::vector<std::string>& dirs) {
    return [dirs](GrpcLinkOptions& o) {
      auto server = ServerCredentials(dirs[o.pool_index]);
      auto channel = ChannelCredentials(dirs[o.pool_index]);
      ASSERT_TRUE(server.ok()) << server.status();
      ASSERT_TRUE(channel.ok()) << channel.status();
      o.server_credentials = *server;
      o.channel_credentials = *channel;
    };
  }

  std::string root_;
};

TEST_F(GrpcLinkTlsTest, PeersOfOneCaExchange) {
  const std::string a = Certs("a");
  const std::string b = Certs("b", "a");
  auto links = MakeGrpcLinks(2, Tls({a, b}));
  ASSERT_EQ(links.size(), 2u);
  const std::vector<std::string> payloads = {Bytes(kThreeAndHalfMiB, 1), Bytes(kMiB, 2)};
  ExpectDelivered(ExchangeAll(Raw(links), 1, payloads), payloads);
}

TEST_F(GrpcLinkTlsTest, PeerOfAnotherCaIsNotReached) {
  const std::string a = Certs("a");
  const std::string other = Certs("other");
  auto links = MakeGrpcLinks(2, Tls({a, other}));
  ASSERT_EQ(links.size(), 2u);
  const milliseconds deadline(1000);
  const auto start = std::chrono::steady_clock::now();
  std::vector<Result> results = ExchangeAll(Raw(links), 1, {"a", "b"}, deadline);
  for (const Result& r : results) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  }
  EXPECT_LT(Since(start), deadline + milliseconds(2000));
}

}  // namespace
}  // namespace tandem
