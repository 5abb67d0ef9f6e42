// Goodput of the gradient link over an emulated WAN: two GrpcLinks (two pool
// leaders) exchange payloads through tandem-wan-proxy (the proxy library,
// in-process) with a rate limit and a one-way delay per direction. tandem's
// parallel streams against a single gRPC stream, in the same run, on the same
// emulated link; goodput is payload bytes per second in one direction as a
// fraction of the link rate.
// Usage: wan_goodput_bench [--rate-mbit 100] [--rtt-ms 50] [--mib 8] [--rounds 4]
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "infra/wan_proxy/wan_proxy.h"
#include "transport/grpc_link.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

struct Result {
  double seconds_per_round = 0;
  double goodput_mbit = 0;
  uint64_t wire_bytes = 0;
  uint64_t payload_bytes = 0;
};

Result Measure(int streams, double rate_mbit, int rtt_ms, size_t payload_bytes, int rounds) {
  // Each leader listens behind its own proxy, so each direction of payload
  // crosses one proxy: rate and delay apply once per direction.
  std::vector<std::unique_ptr<GrpcLink>> links;
  std::vector<std::unique_ptr<infra::WanProxy>> proxies;
  for (int pool = 0; pool < 2; ++pool) {
    GrpcLinkOptions options;
    options.job_id = "goodput";
    options.cloud = pool == 0 ? "cloud-a" : "cloud-b";
    options.pool_index = pool;
    options.pool_count = 2;
    options.streams_per_peer = streams;
    options.server_credentials = grpc::InsecureServerCredentials();
    options.channel_credentials = grpc::InsecureChannelCredentials();
    auto link = GrpcLink::Create(options);
    Check(link.status(), "link");
    infra::WanProxyOptions proxy;
    proxy.target = "127.0.0.1:" + std::to_string((*link)->port());
    proxy.delay = std::chrono::milliseconds(rtt_ms / 2);
    proxy.rate_mbit = rate_mbit;
    // Twice the bandwidth-delay product: the rate, not the buffer, limits.
    proxy.buffer_bytes =
        std::max<size_t>(4 << 20, static_cast<size_t>(rate_mbit * 1e6 / 8 * rtt_ms / 1000 * 2));
    auto started = infra::WanProxy::Start(proxy);
    Check(started.status(), "proxy");
    proxies.push_back(std::move(*started));
    links.push_back(std::move(*link));
  }
  const std::vector<std::string> peers = {proxies[0]->listen_address(),
                                          proxies[1]->listen_address()};
  for (auto& link : links) Check(link->SetPeers(peers), "peers");
  for (auto& link : links) Check(link->Connect(std::chrono::seconds(30)), "connect");

  const std::string payload(payload_bytes, 'g');
  auto run_rounds = [&](int pool, uint64_t first, int count) {
    for (int r = 0; r < count; ++r) {
      auto all = links[pool]->Exchange(first + r, payload, std::chrono::seconds(120));
      Check(all.status(), "exchange");
    }
  };
  // One round to open the TCP windows, then the measured rounds.
  std::thread warm(run_rounds, 1, 1, 1);
  run_rounds(0, 1, 1);
  warm.join();
  const uint64_t wire_before = links[0]->Stats().wire_bytes_sent;
  const Clock::time_point start = Clock::now();
  std::thread peer(run_rounds, 1, 2, rounds);
  run_rounds(0, 2, rounds);
  peer.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Result result;
  result.seconds_per_round = seconds / rounds;
  result.goodput_mbit = payload_bytes * 8.0 * rounds / seconds / 1e6;
  result.wire_bytes = links[0]->Stats().wire_bytes_sent - wire_before;
  result.payload_bytes = payload_bytes * rounds;
  links.clear();
  proxies.clear();
  return result;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  double rate_mbit = 100;
  int rtt_ms = 50;
  size_t mib = 8;
  int rounds = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--rate-mbit") rate_mbit = std::atof(argv[i + 1]);
    if (flag == "--rtt-ms") rtt_ms = std::atoi(argv[i + 1]);
    if (flag == "--mib") mib = std::strtoul(argv[i + 1], nullptr, 10);
    if (flag == "--rounds") rounds = std::atoi(argv[i + 1]);
  }
  std::printf(
      "| link: %.0f Mbit/s, RTT %d ms; %zu MiB each way per round, %d rounds | "
      "s/round | goodput Mbit/s | fraction of link rate | wire/payload |\n",
      rate_mbit, rtt_ms, mib, rounds);
  std::printf("| --- | --- | --- | --- | --- |\n");
  double baseline = 0;
  for (int streams : {1, 4, 8}) {
    const tandem::Result r = tandem::Measure(streams, rate_mbit, rtt_ms, mib << 20, rounds);
    if (streams == 1) baseline = r.goodput_mbit;
    std::printf("| %s, %d stream%s | %.2f | %.1f | %.3f | %.4f |\n",
                streams == 1 ? "single gRPC stream (baseline)" : "tandem parallel streams", streams,
                streams == 1 ? "" : "s", r.seconds_per_round, r.goodput_mbit,
                r.goodput_mbit / rate_mbit, static_cast<double>(r.wire_bytes) / r.payload_bytes);
    if (streams != 1)
      std::printf("|   ratio to the single stream | | %.2f | | |\n", r.goodput_mbit / baseline);
  }
  return 0;
}
