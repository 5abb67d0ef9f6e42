// The contract every codec keeps (one suite run against all of them), then
// what is particular to each codec.
#include "transport/codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace tandem {
namespace {

using ::testing::HasSubstr;
using Shapes = std::vector<std::vector<int64_t>>;

// A small CNN: conv weights (4-D), biases, two linear layers. 24234 elements:
// five int8 chunks and a partial one.
const Shapes kCnnShapes = {{16, 3, 3, 3}, {16}, {32, 16, 3, 3}, {32},
                           {64, 288},     {64}, {10, 64},       {10}};
// PowerSGD at rank 4 on a 256x512 matrix, plus a small conv layer and biases.
const Shapes kPowerSgdShapes = {{256, 512}, {256}, {64, 32, 3, 3}, {64}};

struct CodecCase {
  std::string name;
  v1::CodecKind kind;
  uint32_t rank = 0;
  double topk_ratio = 0;
  Shapes shapes;
  // Expected payload bytes / (4 n).
  double min_ratio;
  double max_ratio;
  bool error_feedback;
  v1::FactorPrecision factors = v1::FACTOR_PRECISION_FP32;  // powersgd
};

void PrintTo(const CodecCase& c, std::ostream* os) { *os << c.name; }

size_t Numel(const Shapes& shapes) {
  size_t n = 0;
  for (const auto& shape : shapes) {
    size_t numel = 1;
    for (int64_t d : shape) numel *= static_cast<size_t>(d);
    n += numel;
  }
  return n;
}

v1::ExchangeSpec Spec(v1::CodecKind kind, uint32_t rank = 4, double ratio = 0.01,
                      v1::FactorPrecision factors = v1::FACTOR_PRECISION_FP32) {
  v1::ExchangeSpec spec;
  spec.set_codec(kind);
  spec.set_rank(rank);
  spec.set_topk_ratio(ratio);
  spec.set_factors(factors);
  return spec;
}

std::unique_ptr<Codec> Make(const CodecCase& c, uint64_t seed = 7) {
  absl::StatusOr<std::unique_ptr<Codec>> codec =
      MakeCodec(Spec(c.kind, c.rank, c.topk_ratio, c.factors), c.shapes, seed);
  EXPECT_TRUE(codec.ok()) << codec.status();
  return codec.ok() ? std::move(*codec) : nullptr;
}

// Gaussian, with the tensors at scales 0.01, 1 and 100 in turn.
std::vector<float> Gradient(const Shapes& shapes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> g;
  for (size_t t = 0; t < shapes.size(); ++t) {
    const float scale = t % 3 == 0 ? 1.0f : t % 3 == 1 ? 0.01f : 100.0f;
    for (size_t i = 0; i < Numel({shapes[t]}); ++i) g.push_back(scale * normal(rng));
  }
  return g;
}

std::vector<float> ErrorState(const Codec& codec) {
  for (const auto& [name, values] : codec.State()) {
    if (name == kCodecErrorState) return values;
  }
  return std::vector<float>(codec.size(), 0.0f);
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class CodecContractTest : public ::testing::TestWithParam<CodecCase> {
 protected:
  void SetUp() override {
    codec_ = Make(GetParam());
    ASSERT_NE(codec_, nullptr);
    n_ = Numel(GetParam().shapes);
    ASSERT_EQ(codec_->size(), n_);
    ASSERT_EQ(codec_->kind(), GetParam().kind);
  }

  std::vector<float> RoundTrip(Codec& codec, const std::vector<float>& g, std::string* payload) {
    std::vector<float> out(g.size());
    EXPECT_TRUE(codec.Encode(g.data(), g.size(), payload).ok());
    absl::Status s = codec.Decode(*payload, out.data(), out.size());
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  std::unique_ptr<Codec> codec_;
  size_t n_ = 0;
};

TEST_P(CodecContractTest, RoundTripWithinTheCodecsBound) {
  const std::vector<float> g = Gradient(GetParam().shapes, 1);
  std::string payload;
  const std::vector<float> d = RoundTrip(*codec_, g, &payload);
  switch (GetParam().kind) {
    case v1::CODEC_KIND_NONE:
      EXPECT_TRUE(BitwiseEqual(d, g));
      break;
    case v1::CODEC_KIND_FP16:
      for (size_t i = 0; i < n_; ++i) {
        ASSERT_LE(std::fabs(d[i] - g[i]), std::max(std::fabs(g[i]) * 0x1p-11f, 0x1p-25f)) << i;
      }
      break;
    case v1::CODEC_KIND_BF16:
      for (size_t i = 0; i < n_; ++i) ASSERT_LE(std::fabs(d[i] - g[i]), std::fabs(g[i]) * 0x1p-8f);
      break;
    case v1::CODEC_KIND_INT8:
      for (size_t begin = 0; begin < n_; begin += 4096) {
        const size_t end = std::min(n_, begin + 4096);
        float max_abs = 0;
        for (size_t i = begin; i < end; ++i) max_abs = std::max(max_abs, std::fabs(g[i]));
        const float half_step = max_abs / 127 / 2;
        for (size_t i = begin; i < end; ++i) {
          ASSERT_LE(std::fabs(d[i] - g[i]), half_step * 1.0001f) << i;
        }
      }
      break;
    case v1::CODEC_KIND_TOPK: {
      const size_t k = static_cast<size_t>(std::round(GetParam().topk_ratio * n_));
      size_t kept = 0;
      float smallest_kept = std::numeric_limits<float>::infinity();
      float largest_dropped = 0;
      for (size_t i = 0; i < n_; ++i) {
        if (d[i] != 0) {
          ASSERT_EQ(d[i], g[i]) << i;
          ++kept;
          smallest_kept = std::min(smallest_kept, std::fabs(g[i]));
        } else {
          largest_dropped = std::max(largest_dropped, std::fabs(g[i]));
        }
      }
      EXPECT_EQ(kept, k);
      EXPECT_GE(smallest_kept, largest_dropped);
      break;
    }
    case v1::CODEC_KIND_POWERSGD: {
      // A projection onto P never grows a matrix; 1-D tensors come through exactly.
      size_t offset = 0;
      for (const auto& shape : GetParam().shapes) {
        const size_t numel = Numel({shape});
        double g2 = 0, e2 = 0;
        for (size_t i = offset; i < offset + numel; ++i) {
          g2 += double{g[i]} * g[i];
          e2 += double{d[i] - g[i]} * (d[i] - g[i]);
        }
        if (shape.size() == 1) {
          EXPECT_EQ(e2, 0) << "tensor at " << offset;
        } else {
          EXPECT_LT(e2, g2) << "tensor at " << offset;
        }
        offset += numel;
      }
      break;
    }
    default:
      FAIL();
  }
}

TEST_P(CodecContractTest, ErrorFeedbackConservesWhatItHoldsBack) {
  // Per element: sum of inputs, sum of decodes, and the magnitudes that
  // bound the fp32 rounding of the residual updates.
  std::vector<double> inputs(n_, 0.0), decoded(n_, 0.0), magnitude(n_, 0.0);
  std::string payload;
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> g = Gradient(GetParam().shapes, 100 + step);
    const std::vector<float> d = RoundTrip(*codec_, g, &payload);
    for (size_t i = 0; i < n_; ++i) {
      inputs[i] += g[i];
      decoded[i] += d[i];
      magnitude[i] += std::fabs(g[i]) + std::fabs(d[i]);
    }
  }
  const std::vector<float> residual = ErrorState(*codec_);
  if (!GetParam().error_feedback) {
    EXPECT_TRUE(codec_->State().empty());
    return;
  }
  double held_back = 0;
  for (size_t i = 0; i < n_; ++i) {
    held_back = std::max(held_back, double{std::fabs(residual[i])});
    ASSERT_NEAR(inputs[i], decoded[i] + residual[i], 1e-5 * magnitude[i]) << i;
  }
  EXPECT_GT(held_back, 0) << "a lossy codec with error feedback holds something back";
}

TEST_P(CodecContractTest, CompressionRatioInTheExpectedRange) {
  const std::vector<float> g = Gradient(GetParam().shapes, 2);
  std::string payload;
  ASSERT_TRUE(codec_->Encode(g.data(), n_, &payload).ok());
  const double ratio = static_cast<double>(payload.size()) / (4.0 * n_);
  EXPECT_GE(ratio, GetParam().min_ratio);
  EXPECT_LE(ratio, GetParam().max_ratio);
  RecordProperty("compression_ratio", std::to_string(ratio));
}

TEST_P(CodecContractTest, LoadStateOfAStateContinuesBitwise) {
  std::string payload;
  for (int step = 0; step < 3; ++step) {
    RoundTrip(*codec_, Gradient(GetParam().shapes, 10 + step), &payload);
  }
  // Another seed: what must carry over (PowerSGD's Q) comes from the state.
  std::unique_ptr<Codec> copy = Make(GetParam(), /*seed=*/999);
  ASSERT_TRUE(copy->LoadState(codec_->State()).ok());
  for (int step = 3; step < 6; ++step) {
    const std::vector<float> g = Gradient(GetParam().shapes, 10 + step);
    std::string a, b;
    const std::vector<float> da = RoundTrip(*codec_, g, &a);
    const std::vector<float> db = RoundTrip(*copy, g, &b);
    EXPECT_EQ(a, b) << "step " << step;
    EXPECT_TRUE(BitwiseEqual(da, db)) << "step " << step;
  }
  EXPECT_EQ(codec_->State(), copy->State());
}

TEST_P(CodecContractTest, LoadStateRejectsAForeignState) {
  CodecState state = codec_->State();
  CodecState renamed = state;
  renamed.push_back({"codec.something_else", {1.0f}});
  EXPECT_EQ(codec_->LoadState(renamed).code(), absl::StatusCode::kInvalidArgument);
  if (!state.empty()) {
    CodecState shorter = state;
    shorter[0].second.pop_back();
    EXPECT_EQ(codec_->LoadState(shorter).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(codec_->LoadState({}).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(codec_->LoadState(state).ok());
}

// What one process writes: three steps' payloads and decodes.
std::string Transcript(const CodecCase& c) {
  std::unique_ptr<Codec> codec = Make(c);
  std::string all, payload;
  std::vector<float> out(codec->size());
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> g = Gradient(c.shapes, 20 + step);
    if (!codec->Encode(g.data(), g.size(), &payload).ok()) return "encode failed";
    if (!codec->Decode(payload, out.data(), out.size()).ok()) return "decode failed";
    all += payload;
    all.append(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float));
  }
  return all;
}

TEST_P(CodecContractTest, AnotherProcessEncodesTheSameBytes) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    const std::string t = Transcript(GetParam());
    for (size_t done = 0; done < t.size();) {
      const ssize_t w = write(fds[1], t.data() + done, t.size() - done);
      if (w <= 0) _exit(1);
      done += static_cast<size_t>(w);
    }
    _exit(0);
  }
  close(fds[1]);
  std::string theirs;
  char buf[1 << 16];
  for (ssize_t r; (r = read(fds[0], buf, sizeof buf)) > 0;)
    theirs.append(buf, static_cast<size_t>(r));
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const std::string mine = Transcript(GetParam());
  ASSERT_GT(mine.size(), 100u);
  EXPECT_TRUE(mine == theirs) << "sizes " << mine.size() << " and " << theirs.size();
}

TEST_P(CodecContractTest, BadPayloadsFailLoudly) {
  const std::vector<float> g = Gradient(GetParam().shapes, 3);
  std::string payload;
  ASSERT_TRUE(codec_->Encode(g.data(), n_, &payload).ok());
  std::vector<float> out(n_ + 1);

  for (size_t len : {size_t{0}, size_t{10}, size_t{23}, size_t{24}, size_t{25}, payload.size() / 2,
                     payload.size() - 1}) {
    EXPECT_EQ(codec_->Decode(payload.substr(0, len), out.data(), n_).code(),
              absl::StatusCode::kDataLoss)
        << "truncated to " << len;
  }
  EXPECT_EQ(codec_->Decode(payload + "x", out.data(), n_).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(codec_->Decode(std::string(100, 'x'), out.data(), n_).code(),
            absl::StatusCode::kDataLoss);

  // Another codec's payload for a gradient of the same shapes.
  for (v1::CodecKind other : {v1::CODEC_KIND_NONE, v1::CODEC_KIND_FP16, v1::CODEC_KIND_BF16,
                              v1::CODEC_KIND_INT8, v1::CODEC_KIND_TOPK, v1::CODEC_KIND_POWERSGD}) {
    if (other == GetParam().kind) continue;
    auto foreign = MakeCodec(Spec(other), GetParam().shapes, 7);
    ASSERT_TRUE(foreign.ok());
    std::string p;
    ASSERT_TRUE((*foreign)->Encode(g.data(), n_, &p).ok());
    const absl::Status s = codec_->Decode(p, out.data(), n_);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << other << ": " << s;
  }
  // The same codec differently configured.
  auto other_config = MakeCodec(
      Spec(GetParam().kind, GetParam().rank + 1, GetParam().topk_ratio == 0.5 ? 0.25 : 0.5),
      GetParam().shapes, 7);
  ASSERT_TRUE(other_config.ok());
  std::string p;
  ASSERT_TRUE((*other_config)->Encode(g.data(), n_, &p).ok());
  if (GetParam().kind == v1::CODEC_KIND_TOPK || GetParam().kind == v1::CODEC_KIND_POWERSGD) {
    EXPECT_EQ(codec_->Decode(p, out.data(), n_).code(), absl::StatusCode::kInvalidArgument);
  }

  // A payload for one more element, and a wrong n for this one.
  Shapes bigger = GetParam().shapes;
  bigger.push_back({1});
  auto big = MakeCodec(Spec(GetParam().kind, GetParam().rank, GetParam().topk_ratio), bigger, 7);
  ASSERT_TRUE(big.ok());
  const std::vector<float> g1 = Gradient(bigger, 3);
  ASSERT_TRUE((*big)->Encode(g1.data(), n_ + 1, &p).ok());
  EXPECT_THAT(codec_->Decode(p, out.data(), n_).message(), HasSubstr("elements"));
  EXPECT_EQ(codec_->Decode(p, out.data(), n_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(codec_->Decode(payload, out.data(), n_ + 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(codec_->Encode(g1.data(), n_ + 1, &p).code(), absl::StatusCode::kInvalidArgument);

  // Another format version.
  std::string versioned = payload;
  versioned[5] = 2;
  EXPECT_EQ(codec_->Decode(versioned, out.data(), n_).code(), absl::StatusCode::kInvalidArgument);

  // Random corruption of the body: any status, but no crash and no access out
  // of bounds (run under ASan: `make asan`).
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    std::string corrupt = payload;
    for (int j = 0; j < 4; ++j) {
      corrupt[24 + rng() % (corrupt.size() - 24)] = static_cast<char>(rng());
    }
    codec_->Decode(corrupt, out.data(), n_).IgnoreError();
  }
}

// One step of the multi-party protocol of codec.h among `codecs`.
std::vector<std::vector<float>> ExchangeStep(const std::vector<Codec*>& codecs,
                                             const std::vector<std::vector<float>>& grads) {
  const size_t parties = codecs.size();
  std::vector<std::string> round(parties);
  for (size_t p = 0; p < parties; ++p) {
    const absl::Status s = codecs[p]->BeginStep(grads[p].data(), grads[p].size(), &round[p]);
    EXPECT_TRUE(s.ok()) << s;
  }
  for (int r = 1; r < codecs[0]->rounds(); ++r) {
    std::vector<std::string> next(parties);
    for (size_t p = 0; p < parties; ++p) {
      const absl::Status s = codecs[p]->NextRound(round, &next[p]);
      EXPECT_TRUE(s.ok()) << s;
    }
    round = std::move(next);
  }
  std::vector<std::vector<float>> out(parties, std::vector<float>(grads[0].size()));
  for (size_t p = 0; p < parties; ++p) {
    const absl::Status s = codecs[p]->FinishStep(round, out[p].data(), out[p].size());
    EXPECT_TRUE(s.ok()) << s;
  }
  return out;
}

TEST_P(CodecContractTest, PartiesAgreeBitwiseAndConserveTheSum) {
  std::unique_ptr<Codec> a = Make(GetParam());
  std::unique_ptr<Codec> b = Make(GetParam());
  std::vector<double> inputs(n_, 0.0), summed(n_, 0.0), magnitude(n_, 0.0);
  for (int step = 0; step < 4; ++step) {
    const std::vector<std::vector<float>> grads = {Gradient(GetParam().shapes, 30 + step),
                                                   Gradient(GetParam().shapes, 40 + step)};
    const auto out = ExchangeStep({a.get(), b.get()}, grads);
    ASSERT_TRUE(BitwiseEqual(out[0], out[1])) << "step " << step;
    for (size_t i = 0; i < n_; ++i) {
      inputs[i] += double{grads[0][i]} + grads[1][i];
      summed[i] += out[0][i];
      magnitude[i] += std::fabs(grads[0][i]) + std::fabs(grads[1][i]) + std::fabs(out[0][i]);
    }
  }
  if (GetParam().kind == v1::CODEC_KIND_POWERSGD) {
    EXPECT_EQ(a->State()[1], b->State()[1]) << "the shared warm start stays shared";
  }
  if (!GetParam().error_feedback) return;
  const std::vector<float> ea = ErrorState(*a), eb = ErrorState(*b);
  for (size_t i = 0; i < n_; ++i) {
    ASSERT_NEAR(inputs[i], summed[i] + ea[i] + eb[i], 1e-5 * magnitude[i]) << i;
  }
}

TEST_P(CodecContractTest, OnePartyStepEqualsEncodeThenDecode) {
  std::unique_ptr<Codec> single = Make(GetParam());
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> g = Gradient(GetParam().shapes, 50 + step);
    std::string payload;
    const std::vector<float> expected = RoundTrip(*single, g, &payload);
    const auto out = ExchangeStep({codec_.get()}, {g});
    EXPECT_TRUE(BitwiseEqual(out[0], expected)) << "step " << step;
  }
  EXPECT_EQ(single->State(), codec_->State());
}

TEST_P(CodecContractTest, AnAbortedStepLeavesNoTrace) {
  std::unique_ptr<Codec> peer = Make(GetParam());
  for (int step = 0; step < 2; ++step) {
    ExchangeStep({codec_.get(), peer.get()},
                 {Gradient(GetParam().shapes, 60 + step), Gradient(GetParam().shapes, 70 + step)});
  }
  const CodecState before = codec_->State();
  const std::vector<float> g = Gradient(GetParam().shapes, 80);
  for (int rounds = 1; rounds <= codec_->rounds(); ++rounds) {
    std::vector<std::string> payloads(2);
    ASSERT_TRUE(codec_->BeginStep(g.data(), n_, &payloads[0]).ok());
    ASSERT_TRUE(peer->BeginStep(g.data(), n_, &payloads[1]).ok());
    if (rounds == 2) {
      std::string next;
      ASSERT_TRUE(codec_->NextRound(payloads, &next).ok());
    }
    codec_->AbortStep();
    EXPECT_EQ(codec_->State(), before) << "aborted after round " << rounds;
  }
  // BeginStep aborts a step in progress; the redone step, here alone, is the
  // one a codec that never started the aborted one computes.
  std::string payload;
  ASSERT_TRUE(codec_->BeginStep(Gradient(GetParam().shapes, 81).data(), n_, &payload).ok());
  std::unique_ptr<Codec> fresh = Make(GetParam());
  ASSERT_TRUE(fresh->LoadState(before).ok());
  const auto redone = ExchangeStep({codec_.get()}, {g});
  const auto expected = ExchangeStep({fresh.get()}, {g});
  EXPECT_TRUE(BitwiseEqual(redone[0], expected[0]));
  EXPECT_EQ(codec_->State(), fresh->State());
  // A finished step is not undone.
  codec_->AbortStep();
  EXPECT_EQ(codec_->State(), fresh->State());
}

TEST_P(CodecContractTest, RoundsOutOfSequenceFail) {
  std::vector<float> out(n_);
  std::string payload;
  EXPECT_EQ(codec_->FinishStep({}, out.data(), n_).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(codec_->NextRound({}, &payload).code(), absl::StatusCode::kFailedPrecondition);
  const std::vector<float> g = Gradient(GetParam().shapes, 4);
  ASSERT_TRUE(codec_->BeginStep(g.data(), n_, &payload).ok());
  if (codec_->rounds() == 1) {
    EXPECT_EQ(codec_->NextRound({payload}, &payload).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(codec_->FinishStep({}, out.data(), n_).code(), absl::StatusCode::kInvalidArgument);
  } else {
    EXPECT_EQ(codec_->FinishStep({payload}, out.data(), n_).code(),
              absl::StatusCode::kFailedPrecondition);
    // A round-1 payload is not something Decode reads.
    EXPECT_EQ(codec_->Decode(payload, out.data(), n_).code(), absl::StatusCode::kInvalidArgument);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllCodecs, CodecContractTest,
    ::testing::Values(
        CodecCase{"none", v1::CODEC_KIND_NONE, 0, 0, kCnnShapes, 1.0, 1.01, false},
        CodecCase{"fp16", v1::CODEC_KIND_FP16, 0, 0, kCnnShapes, 0.5, 0.51, false},
        CodecCase{"bf16", v1::CODEC_KIND_BF16, 0, 0, kCnnShapes, 0.5, 0.51, false},
        CodecCase{"int8", v1::CODEC_KIND_INT8, 0, 0, kCnnShapes, 0.25, 0.26, true},
        CodecCase{"topk", v1::CODEC_KIND_TOPK, 0, 0.01, kCnnShapes, 0.01, 0.02, true},
        // Dense enough that the bitmap beats the varints.
        CodecCase{"topk_dense", v1::CODEC_KIND_TOPK, 0, 0.5, kCnnShapes, 0.53, 0.54, true},
        // 256x512 at rank 4: 3072 of 131072 floats; 64x288: 1408 of 18432.
        CodecCase{"powersgd", v1::CODEC_KIND_POWERSGD, 4, 0, kPowerSgdShapes, 0.02, 0.035, true},
        CodecCase{"powersgd_rank1_cnn", v1::CODEC_KIND_POWERSGD, 1, 0, kCnnShapes, 0.01, 0.05,
                  true},
        // The same factors in fp16 and int8 (plus a 4-byte scale per column;
        // the 320 biases stay fp32): 10304 and 5824 bytes of 599296.
        CodecCase{"powersgd_fp16_factors", v1::CODEC_KIND_POWERSGD, 4, 0, kPowerSgdShapes, 0.015,
                  0.02, true, v1::FACTOR_PRECISION_FP16},
        CodecCase{"powersgd_int8_factors", v1::CODEC_KIND_POWERSGD, 4, 0, kPowerSgdShapes, 0.008,
                  0.011, true, v1::FACTOR_PRECISION_INT8}),
    [](const ::testing::TestParamInfo<CodecCase>& info) { return info.param.name; });

// --- What is particular to each codec ---

std::vector<float> Through(v1::CodecKind kind, const std::vector<float>& g) {
  auto codec = MakeCodec(Spec(kind), {{static_cast<int64_t>(g.size())}}, 1);
  EXPECT_TRUE(codec.ok());
  std::string payload;
  std::vector<float> out(g.size());
  EXPECT_TRUE((*codec)->Encode(g.data(), g.size(), &payload).ok());
  EXPECT_TRUE((*codec)->Decode(payload, out.data(), out.size()).ok());
  return out;
}

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint32_t ToBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

TEST(Fp16CodecTest, RoundsLikeTheCompilersHalfType) {
  // Every 997th bit pattern, plus the edges of the half range.
  std::vector<float> g;
  for (uint64_t bits = 0; bits <= 0xffffffffu; bits += 997) g.push_back(FromBits(bits));
  for (float v : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.0001p-25f,
                  0x1.8p-24f, 0x1p-14f, 0x1.ffcp-15f, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f,
                  std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::denorm_min()}) {
    g.push_back(v);
    g.push_back(-v);
  }
  // Every half, which must come back as itself.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    _Float16 half;
    std::memcpy(&half, &bits, sizeof half);
    g.push_back(static_cast<float>(half));
  }
  const std::vector<float> d = Through(v1::CODEC_KIND_FP16, g);
  for (size_t i = 0; i < g.size(); ++i) {
    const float expected = static_cast<float>(static_cast<_Float16>(g[i]));
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(d[i])) << std::hexfloat << g[i];
    } else {
      ASSERT_EQ(ToBits(d[i]), ToBits(expected)) << std::hexfloat << g[i] << " -> " << d[i];
    }
  }
}

// bfloat16 by definition: the nearest float with 16 zero low bits, ties to even.
float ReferenceBf16(float x) {
  const uint32_t bits = ToBits(x);
  const float lo = FromBits(bits & 0xffff0000u);
  const float hi = FromBits((bits & 0xffff0000u) + 0x10000u);
  const double dl = std::fabs(double{x} - lo), dh = std::fabs(double{hi} - x);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (bits & 0x10000u) ? hi : lo;
}

TEST(Bf16CodecTest, RoundsToNearestEven) {
  std::vector<float> g;
  // Finite floats whose rounding stays finite (the bit patterns below the
  // largest bfloat16 plus half its step).
  for (uint64_t bits = 0; bits < 0x7f7f8000u; bits += 613) {
    g.push_back(FromBits(static_cast<uint32_t>(bits)));
    g.push_back(-FromBits(static_cast<uint32_t>(bits)));
  }
  const std::vector<float> d = Through(v1::CODEC_KIND_BF16, g);
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(ToBits(d[i]), ToBits(ReferenceBf16(g[i]))) << std::hexfloat << g[i];
  }
  const std::vector<float> edges =
      Through(v1::CODEC_KIND_BF16,
              {1.0f + 0x1p-8f, 1.0f + 0x3p-8f, FromBits(0x7f7f8000u),
               std::numeric_limits<float>::max(), std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(edges[0], 1.0f);            // tie to even, down
  EXPECT_EQ(edges[1], 1.0f + 0x1p-6f);  // tie to even, up
  EXPECT_TRUE(std::isinf(edges[2]));    // halfway to 2^128 rounds up
  EXPECT_TRUE(std::isinf(edges[3]));
  EXPECT_TRUE(std::isnan(edges[4]));
}

TEST(Int8CodecTest, ZeroAndNonFiniteChunks) {
  std::vector<float> g(3 * 4096, 0.0f);
  for (size_t i = 4096; i < 2 * 4096; ++i) g[i] = 127.0f;  // scale 1: exact
  g[2 * 4096 + 7] = std::numeric_limits<float>::infinity();
  const std::vector<float> d = Through(v1::CODEC_KIND_INT8, g);
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(d[i], 0.0f);
  for (size_t i = 4096; i < 2 * 4096; ++i) ASSERT_EQ(d[i], 127.0f);
  for (size_t i = 2 * 4096; i < 3 * 4096; ++i) ASSERT_TRUE(std::isnan(d[i])) << i;
}

TEST(TopkCodecTest, TiesGoToTheLowestIndices) {
  auto codec = MakeCodec(Spec(v1::CODEC_KIND_TOPK, 0, 0.25), {{8}}, 1);
  ASSERT_TRUE(codec.ok());
  const std::vector<float> g = {1, -1, 1, 3, -1, 1, 1, 1};
  std::string payload;
  std::vector<float> out(8);
  ASSERT_TRUE((*codec)->Encode(g.data(), 8, &payload).ok());
  ASSERT_TRUE((*codec)->Decode(payload, out.data(), 8).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(1, 0, 0, 3, 0, 0, 0, 0));
  // The next step sends what was held back, plus the new gradient.
  ASSERT_TRUE((*codec)->Encode(std::vector<float>(8, 0.0f).data(), 8, &payload).ok());
  ASSERT_TRUE((*codec)->Decode(payload, out.data(), 8).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(0, -1, 1, 0, 0, 0, 0, 0));
}

TEST(TopkCodecTest, IndexFormatIsTheSmallerOne) {
  const std::vector<float> g = Gradient({{100000}}, 1);
  for (const auto& [ratio, format] : {std::pair{0.01, 0}, std::pair{0.5, 1}}) {
    auto codec = MakeCodec(Spec(v1::CODEC_KIND_TOPK, 0, ratio), {{100000}}, 1);
    ASSERT_TRUE(codec.ok());
    std::string payload;
    ASSERT_TRUE((*codec)->Encode(g.data(), g.size(), &payload).ok());
    EXPECT_EQ(payload[24], format) << ratio;
  }
}

// A [rows, cols] matrix A B^T of rank `rank`, A and B Gaussian, row major.
std::vector<float> RankRMatrix(int rows, int cols, int rank, std::mt19937_64& rng,
                               std::normal_distribution<float>& normal) {
  std::vector<float> a(rows * rank), b(cols * rank);
  for (float& v : a) v = normal(rng);
  for (float& v : b) v = normal(rng);
  std::vector<float> m(rows * cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      float s = 0;
      for (int k = 0; k < rank; ++k) s += a[i * rank + k] * b[j * rank + k];
      m[i * cols + j] = s;
    }
  }
  return m;
}

TEST(PowerSgdCodecTest, ExactForARankRMatrix) {
  constexpr int kRows = 256, kCols = 512, kRank = 4;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> g = RankRMatrix(kRows, kCols, kRank, rng, normal);
  float max_abs = 0;
  for (float v : g) max_abs = std::max(max_abs, std::fabs(v));
  for (int j = 0; j < kCols; ++j) g.push_back(normal(rng));

  auto codec = MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, kRank), {{kRows, kCols}, {kCols}}, 11);
  ASSERT_TRUE(codec.ok());
  std::string payload;
  std::vector<float> out(g.size());
  ASSERT_TRUE((*codec)->Encode(g.data(), g.size(), &payload).ok());
  ASSERT_TRUE((*codec)->Decode(payload, out.data(), out.size()).ok());
  // Exact up to fp32 rounding, amplified by the conditioning of P = M Q.
  double e2 = 0, g2 = 0;
  for (size_t i = 0; i < kRows * kCols; ++i) {
    ASSERT_NEAR(out[i], g[i], 1e-4 * max_abs) << i;
    e2 += double{out[i] - g[i]} * (out[i] - g[i]);
    g2 += double{g[i]} * g[i];
  }
  EXPECT_LT(std::sqrt(e2 / g2), 1e-5);
  std::printf("rank-%d 256x512: max error %g of max |g| %g, relative Frobenius error %g\n", kRank,
              0.0, max_abs, std::sqrt(e2 / g2));
  for (size_t i = kRows * kCols; i < g.size(); ++i) ASSERT_EQ(out[i], g[i]);
  EXPECT_LT(payload.size(), 0.03 * 4 * g.size());
}

// A rank-4 matrix through fp16 and int8 factors: exact but for the rounding
// of the factors (2^-11 of each column's largest magnitude in fp16, 1/254 in
// int8; the rounded P spans a slightly turned subspace), which error feedback
// keeps in the residual. Measured: 1.2e-3 (fp16) and 4.2e-2 (int8).
TEST(PowerSgdCodecTest, ReducedPrecisionFactorsLoseOnlyTheirRounding) {
  constexpr int kRows = 256, kCols = 512, kRank = 4;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  const std::vector<float> g = RankRMatrix(kRows, kCols, kRank, rng, normal);
  struct Case {
    v1::FactorPrecision factors;
    double min_error;  // above fp32's ~1e-6: the factors were rounded
    double max_error;
  };
  size_t fp32_bytes = 0;
  for (const Case& c :
       {Case{v1::FACTOR_PRECISION_FP32, 0, 1e-5}, Case{v1::FACTOR_PRECISION_FP16, 1e-5, 5e-3},
        Case{v1::FACTOR_PRECISION_INT8, 1e-3, 1e-1}}) {
    auto codec =
        MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, kRank, 0.01, c.factors), {{kRows, kCols}}, 11);
    ASSERT_TRUE(codec.ok());
    std::string payload;
    std::vector<float> out(g.size());
    ASSERT_TRUE((*codec)->Encode(g.data(), g.size(), &payload).ok());
    ASSERT_TRUE((*codec)->Decode(payload, out.data(), out.size()).ok());
    double e2 = 0, g2 = 0, conserved = 0;
    const std::vector<float> residual = ErrorState(**codec);
    for (size_t i = 0; i < g.size(); ++i) {
      e2 += double{out[i] - g[i]} * (out[i] - g[i]);
      g2 += double{g[i]} * g[i];
      conserved = std::max(conserved, std::fabs(double{out[i]} + residual[i] - g[i]));
    }
    const double error = std::sqrt(e2 / g2);
    std::printf("factors %d: relative Frobenius error %g, %zu bytes\n", c.factors, error,
                payload.size());
    EXPECT_GE(error, c.min_error) << c.factors;
    EXPECT_LT(error, c.max_error) << c.factors;
    // What was not sent is held back: decoded + residual = gradient.
    EXPECT_LT(conserved, 1e-4) << c.factors;
    if (c.factors == v1::FACTOR_PRECISION_FP32) fp32_bytes = payload.size();
    const double bytes_per_value = c.factors == v1::FACTOR_PRECISION_FP16   ? 2
                                   : c.factors == v1::FACTOR_PRECISION_INT8 ? 1
                                                                            : 4;
    EXPECT_NEAR(static_cast<double>(payload.size()), fp32_bytes * bytes_per_value / 4,
                0.02 * fp32_bytes)
        << c.factors;
  }
}

TEST(PowerSgdCodecTest, PartiesWithOtherFactorPrecisionsAreRefused) {
  const Shapes shapes = {{32, 64}};
  auto fp32 = MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, 2), shapes, 1);
  auto fp16 =
      MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, 2, 0.01, v1::FACTOR_PRECISION_FP16), shapes, 1);
  ASSERT_TRUE(fp32.ok() && fp16.ok());
  const std::vector<float> g(32 * 64, 0.5f);
  std::string mine, theirs, next;
  ASSERT_TRUE((*fp16)->BeginStep(g.data(), g.size(), &mine).ok());
  ASSERT_TRUE((*fp32)->BeginStep(g.data(), g.size(), &theirs).ok());
  const absl::Status s = (*fp16)->NextRound({mine, theirs}, &next);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST(PowerSgdCodecTest, ZeroGradientKeepsTheRank) {
  auto codec = MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, 2), {{32, 64}}, 1);
  ASSERT_TRUE(codec.ok());
  std::string payload;
  std::vector<float> out(32 * 64);
  const std::vector<float> zero(32 * 64, 0.0f);
  ASSERT_TRUE((*codec)->Encode(zero.data(), zero.size(), &payload).ok());
  ASSERT_TRUE((*codec)->Decode(payload, out.data(), out.size()).ok());
  EXPECT_THAT(out, ::testing::Each(0.0f));
  // The zero gradient zeroed Q, which restarts from the seed: a rank-1
  // gradient still comes through.
  std::vector<float> g(32 * 64);
  for (int i = 0; i < 32; ++i) {
    for (int j = 0; j < 64; ++j) g[i * 64 + j] = static_cast<float>((i + 1) * (j % 5 - 2));
  }
  ASSERT_TRUE((*codec)->Encode(g.data(), g.size(), &payload).ok());
  ASSERT_TRUE((*codec)->Decode(payload, out.data(), out.size()).ok());
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(out[i], g[i], 1e-4) << i;
}

TEST(MakeCodecTest, RejectsBadSpecs) {
  const Shapes shapes = {{4, 4}};
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_UNSPECIFIED), shapes, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodec(Spec(static_cast<v1::CodecKind>(99)), shapes, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, 0), shapes, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, 5000), shapes, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_POWERSGD, 4, 0.01, static_cast<v1::FactorPrecision>(9)),
                      shapes, 1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  for (double ratio : {0.0, -0.1, 1.5, std::nan("")}) {
    EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_TOPK, 4, ratio), shapes, 1).status().code(),
              absl::StatusCode::kInvalidArgument)
        << ratio;
  }
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_NONE), {{4, -1}}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_NONE), {}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCodec(Spec(v1::CODEC_KIND_NONE), {{0, 3}}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A scalar is one element; a 1.0 ratio keeps everything.
  auto scalar = MakeCodec(Spec(v1::CODEC_KIND_TOPK, 4, 1.0), Shapes{std::vector<int64_t>{}}, 1);
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ((*scalar)->size(), 1u);
}

}  // namespace
}  // namespace tandem
