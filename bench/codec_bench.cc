// Gradient codec throughput on one core, against memcpy of the same buffer
// measured in the same run: for a 16 MiB fp32 gradient laid out as a CNN
// (conv and linear weights, biases) and as one flat 1-D tensor, each codec's
// encode and decode time (median of --repeats), payload size and the
// relative error of one step (before error feedback catches up). GB/s are of
// the fp32 input (16 MiB / time). Prints a Markdown table.
// Usage: codec_bench [--repeats N]
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "transport/codec.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using Shapes = std::vector<std::vector<int64_t>>;

constexpr size_t kElements = size_t{16} << 20 >> 2;  // 16 MiB of fp32

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

size_t Numel(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

// A VGG-like CNN for 10 classes; a last 1-D tensor (norm parameters) makes it
// exactly kElements.
Shapes CnnShapes() {
  Shapes shapes = {{64, 3, 3, 3},    {64},  {128, 64, 3, 3},  {128}, {256, 128, 3, 3}, {256},
                   {256, 256, 3, 3}, {256}, {512, 256, 3, 3}, {512}, {1024, 1990},     {1024},
                   {10, 1024},       {10}};
  size_t n = 0;
  for (const auto& s : shapes) n += Numel(s);
  shapes.push_back({static_cast<int64_t>(kElements - n)});
  return shapes;
}

std::vector<float> Gradient(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  std::vector<float> g(kElements);
  for (float& v : g) v = normal(rng);
  return g;
}

double MemcpyGBps(int repeats) {
  std::vector<float> src = Gradient(1), dst(kElements, 1.0f);
  std::vector<double> times;
  for (int r = 0; r < repeats + 1; ++r) {
    src[r] += 1.0f;
    const auto t = Clock::now();
    std::memcpy(dst.data(), src.data(), kElements * sizeof(float));
    const double s = Since(t);
    if (dst[r] != src[r]) std::exit(2);
    if (r > 0) times.push_back(s);
  }
  return kElements * sizeof(float) / Median(times) / 1e9;
}

struct Row {
  const char* codec;
  const char* layout;
  double payload_mib;
  double ratio;
  double error;
  double encode_gbps;
  double decode_gbps;
  double both_gbps;
};

Row Measure(const char* name, v1::CodecKind kind, const char* layout, const Shapes& shapes,
            int repeats) {
  v1::ExchangeSpec spec;
  spec.set_codec(kind);
  spec.set_rank(4);
  spec.set_topk_ratio(0.01);
  absl::StatusOr<std::unique_ptr<Codec>> codec = MakeCodec(spec, shapes, 1);
  Check(codec.status(), "MakeCodec");
  std::vector<std::vector<float>> grads = {Gradient(2), Gradient(3)};
  std::vector<float> out(kElements);
  std::string payload;

  // One step from a fresh state: payload size and relative error.
  Check((*codec)->Encode(grads[0].data(), kElements, &payload), "Encode");
  Check((*codec)->Decode(payload, out.data(), kElements), "Decode");
  double e2 = 0, g2 = 0;
  for (size_t i = 0; i < kElements; ++i) {
    e2 += double{out[i] - grads[0][i]} * (out[i] - grads[0][i]);
    g2 += double{grads[0][i]} * grads[0][i];
  }

  std::vector<double> encode, decode;
  for (int r = 0; r < repeats; ++r) {
    const std::vector<float>& g = grads[r % 2];
    auto t = Clock::now();
    Check((*codec)->Encode(g.data(), kElements, &payload), "Encode");
    encode.push_back(Since(t));
    t = Clock::now();
    Check((*codec)->Decode(payload, out.data(), kElements), "Decode");
    decode.push_back(Since(t));
  }
  const double bytes = kElements * sizeof(float);
  const double te = Median(encode), td = Median(decode);
  return {name,
          layout,
          payload.size() / double{1 << 20},
          payload.size() / bytes,
          std::sqrt(e2 / g2),
          bytes / te / 1e9,
          bytes / td / 1e9,
          bytes / (te + td) / 1e9};
}

int Main(int argc, char** argv) {
  int repeats = 7;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: codec_bench [--repeats N]\n");
      return 2;
    }
  }
  // One core: the codecs are single-threaded; pinning keeps the caches warm.
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  CPU_SET(sched_getcpu(), &cpus);
  sched_setaffinity(0, sizeof cpus, &cpus);

  const double memcpy_gbps = MemcpyGBps(repeats * 3);
  const struct {
    const char* name;
    v1::CodecKind kind;
  } codecs[] = {{"none", v1::CODEC_KIND_NONE},    {"fp16", v1::CODEC_KIND_FP16},
                {"bf16", v1::CODEC_KIND_BF16},    {"int8", v1::CODEC_KIND_INT8},
                {"topk 1%", v1::CODEC_KIND_TOPK}, {"powersgd r4", v1::CODEC_KIND_POWERSGD}};
  const Shapes cnn = CnnShapes();
  const Shapes flat = {{static_cast<int64_t>(kElements)}};

  std::printf(
      "16 MiB fp32 gradient, one core, median of %d; memcpy of the same buffer: %.2f GB/s\n\n",
      repeats, memcpy_gbps);
  std::printf(
      "| codec | layout | payload MiB | payload / fp32 | rel. error (1 step) | encode GB/s | "
      "decode GB/s | encode+decode GB/s | vs memcpy |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& c : codecs) {
    for (const auto& [layout, shapes] : {std::pair{"cnn", &cnn}, std::pair{"flat", &flat}}) {
      const Row row = Measure(c.name, c.kind, layout, *shapes, repeats);
      std::printf("| %s | %s | %.3f | %.4f | %.2e | %.2f | %.2f | %.2f | %.3f |\n", row.codec,
                  row.layout, row.payload_mib, row.ratio, row.error, row.encode_gbps,
                  row.decode_gbps, row.both_gbps, row.both_gbps / memcpy_gbps);
    }
  }
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
