// Gradient codecs for the exchange between clouds: the pool leader of each
// cloud encodes its pool's gradient (one flat fp32 vector made of the model's
// tensors in order) into a payload, the payloads cross the WAN, and every
// leader decodes all of them and combines them into the same sum, bit for bit.
//
// Six codecs sit behind this one interface (CodecKind in job.proto):
//   none      fp32 as is
//   fp16      IEEE half, round to nearest even; no error feedback
//   bf16      bfloat16, round to nearest even; no error feedback
//   int8      symmetric per-chunk scale (4096 elements), error feedback
//   topk      the ratio r of elements largest in magnitude, exact fp32 values,
//             indices delta-varint or bitmap (the smaller), error feedback
//   powersgd  rank-r approximation of every >= 2-D tensor seen as a matrix
//             [shape[0], prod(rest)], warm-started Q from a shared seed, fp32
//             factors, error feedback; 1-D tensors (biases) travel as fp32
// Error feedback: what a step does not send (the residual) is added to the
// next step's gradient, so nothing is lost, only delayed. It is the codec's
// state (State()/LoadState()), which a checkpoint must keep.
//
// Payload: a 24-byte little-endian header (magic "TDCG", codec kind, format
// version, role (a whole step, or a PowerSGD round), element count, a fingerprint of the codec's
// configuration) and a body; decoding a payload made by another codec, another version, another
// configuration or for another element count fails with InvalidArgument, a truncated or
// inconsistent one with DataLoss. Decoding never reads or writes out of bounds, whatever the bytes.
//
// Determinism: the arithmetic is plain single-threaded C++ with a fixed order
// of operations (no reassociation, so vectorizing changes no bit), compiled
// without floating-point contraction (-ffp-contract=off), so the same binary
// produces bitwise identical payloads and decodes on every machine for
// identical inputs and state, whatever the CPU's vector width. No libtorch:
// ATen's matmul picks its kernels, and so its summation order, by CPU. The
// floating-point environment must be the default everywhere (round to
// nearest; denormals not flushed, i.e. the same torch::set_flush_denormal in
// every cloud).
//
// Two ways to use a codec:
//
// 1. Single round (every codec): each leader calls Encode on its gradient and
//    sends the payload; every leader calls Decode on each payload and adds the
//    results in a fixed party order (FinishStep does exactly that). PowerSGD's
//    payload then carries the orthonormal P and the Q of its own gradient: the
//    decoded sum is the sum of each cloud's own low-rank approximation, and
//    each cloud keeps its own warm start.
//
// 2. Multi-party rounds (what the gradient exchange should use; it is the same
//    as 1 for every codec but powersgd, which needs rounds() == 2 to share one
//    basis P across clouds as in PowerSGD's allreduce of P before Q = M^T P):
//
//      std::string mine;
//      codec.BeginStep(grad, n, &mine);                  // each call: check Status
//      std::vector<std::string> all = AllGather(mine);   // every party, party order
//      for (int r = 1; r < codec.rounds(); ++r) {
//        codec.NextRound(all, &mine);
//        all = AllGather(mine);
//      }
//      codec.FinishStep(all, sum, n);                    // the same on every party
//
//    powersgd: BeginStep sends P_i = M_i Q (M_i = gradient + residual, Q the
//    shared warm start); NextRound sums the P_i in party order, orthonormalizes
//    the sum into P (identical everywhere), keeps the residual M_i - P Q_i^T and
//    sends Q_i = M_i^T P plus the 1-D tensors; FinishStep returns
//    P (sum Q_i)^T plus the sum of the 1-D tensors and keeps sum Q_i as the next
//    warm start (identical everywhere, so the shared seed stays shared).
//    Payloads must come in the same party order on every party, this party's
//    own included; the result is a sum (scale the gradient before BeginStep to
//    get a weighted mean).
//
// A step in progress can be undone with AbortStep (a peer was lost, a payload
// was refused): the residual is again what it was before BeginStep, so the
// step can be redone, with other parties, as if it had never started.
//
// State(): the error-feedback buffer "codec.error" (n floats; int8, topk,
// powersgd) and "codec.powersgd.q" (the warm-start Q of every compressed
// matrix in tensor order, each [rank, cols]). Take and load it between steps.
// Stateless codecs return an empty list.
//
// Not thread-safe: one codec per leader, calls from one thread at a time;
// concurrent calls of the const Decode on one codec are safe.
#ifndef TANDEM_TRANSPORT_CODEC_H_
#define TANDEM_TRANSPORT_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tandem/v1/job.pb.h"

namespace tandem {

// Named float buffers, in a fixed order, that a checkpoint keeps.
using CodecState = std::vector<std::pair<std::string, std::vector<float>>>;

inline constexpr char kCodecErrorState[] = "codec.error";
inline constexpr char kCodecPowerSgdQState[] = "codec.powersgd.q";

class Codec {
 public:
  virtual ~Codec() = default;
  Codec(const Codec&) = delete;
  Codec& operator=(const Codec&) = delete;

  virtual v1::CodecKind kind() const = 0;
  // Elements of the gradient this codec was made for.
  size_t size() const { return n_; }
  // Rounds of a multi-party step (see the header comment): 1, or 2 for powersgd.
  virtual int rounds() const { return 1; }

  // Replaces *payload with the encoding of grad[0, n) plus the residual held
  // back so far, and keeps the new residual. Aborts a multi-party step in
  // progress. InvalidArgument if n != size().
  absl::Status Encode(const float* grad, size_t n, std::string* payload);
  // Writes the decoded gradient to out[0, n). Errors as in the header comment;
  // out is unspecified after an error.
  virtual absl::Status Decode(const std::string& payload, float* out, size_t n) const = 0;

  // Multi-party step. BeginStep starts a step (aborting one in progress);
  // NextRound and FinishStep take every party's payload of the previous round
  // in party order. FailedPrecondition when called out of sequence. After an
  // error the step is still in progress: retry the call or AbortStep.
  virtual absl::Status BeginStep(const float* grad, size_t n, std::string* payload);
  virtual absl::Status NextRound(absl::Span<const std::string> payloads, std::string* payload);
  // out[0, n) = the sum over parties, identical on every party. Ends the step.
  virtual absl::Status FinishStep(absl::Span<const std::string> payloads, float* out, size_t n);
  // Undoes the step in progress, if any.
  void AbortStep();

  virtual CodecState State() const = 0;
  // Aborts a step in progress and loads `state`. InvalidArgument, loading
  // nothing, unless it has exactly the names and sizes State() returns, in any
  // order.
  absl::Status LoadState(const CodecState& state);

 protected:
  explicit Codec(size_t n) : n_(n) {}

  // Encode with n == size() and no step in progress.
  virtual absl::Status EncodeImpl(const float* grad, std::string* payload) = 0;
  virtual absl::Status LoadStateImpl(const CodecState& state) = 0;
  // The error-feedback residual, for codecs that have one.
  virtual std::vector<float>* mutable_residual() { return nullptr; }

  // Keeps a copy of the residual for AbortStep; call before a multi-party step
  // first changes it.
  void SaveResidual();
  // Ends a multi-party step: it can no longer be undone.
  void CommitStep();

  // Round of the step in progress: 0 = none, r = BeginStep/NextRound made the
  // round r payload.
  int round_ = 0;

 private:
  const size_t n_;
  bool residual_saved_ = false;
  std::vector<float> saved_residual_;
  std::vector<float> scratch_;  // FinishStep's decode of one party
};

// Makes the codec `spec.codec()` for a gradient made of tensors of
// `tensor_shapes` (in order; a scalar is {}), with `seed` for what must start
// identical on every party (PowerSGD's initial Q). InvalidArgument for an
// unspecified or unknown codec, a negative dimension, no elements, a topk
// ratio outside (0, 1] or a powersgd rank outside [1, 1024].
absl::StatusOr<std::unique_ptr<Codec>> MakeCodec(
    const v1::ExchangeSpec& spec, const std::vector<std::vector<int64_t>>& tensor_shapes,
    uint64_t seed);

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_CODEC_H_
