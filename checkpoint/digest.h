// SHA-256 over bytes, and the state digest of a set of tensors: what two runs
// (or two clouds) compare to know their parameters and optimizer state are
// bitwise identical, and what a checkpoint's manifest records.
//
// The state digest hashes each tensor in pieces of kStateDigestPieceBytes and
// then the pieces' hashes (format 2), so that it needs no pass over the bytes
// of its own: a store whose chunks are those pieces computes it from its chunk
// keys. Manifests of format 1 recorded a single SHA-256 over all the bytes
// (StateDigestV1); they stay verifiable by that definition.
#ifndef TANDEM_CHECKPOINT_DIGEST_H_
#define TANDEM_CHECKPOINT_DIGEST_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

namespace tandem {

struct TensorView;

using Sha256Digest = std::array<uint8_t, 32>;

// Incremental SHA-256 (OpenSSL's EVP). Not thread-safe; one per thread.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t bytes);
  // Returns the digest of everything passed to Update and starts a new message.
  Sha256Digest Finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Sha256Digest Sha256Of(const void* data, size_t bytes);
std::string ToHex(const uint8_t* data, size_t bytes);
inline std::string ToHex(const Sha256Digest& d) { return ToHex(d.data(), d.size()); }

// The state digest hashes tensors in pieces of this many bytes; a
// CheckpointStore with chunks of this size gets it from its chunk keys.
inline constexpr size_t kStateDigestPieceBytes = 4 << 20;

// Hex SHA-256 over, for each tensor in order: its name, a NUL, its byte count
// (8 bytes little endian), then the 32-byte SHA-256 of each consecutive
// kStateDigestPieceBytes piece of its bytes (the last piece may be shorter;
// an empty tensor has none). Hashes the pieces on two threads. The digest of
// manifest format 2 and later.
std::string StateDigest(const std::vector<TensorView>& tensors);

// Hex SHA-256 over, for each tensor in order: its name, a NUL, its byte count
// (8 bytes little endian) and its bytes. The digest of manifest format 1.
std::string StateDigestV1(const std::vector<TensorView>& tensors);

// Computes the state digest of a manifest of format `format_version` (1:
// StateDigestV1, 2: StateDigest) from tensors given one after another, each
// as its bytes in order or, for format 2, partly or wholly as the digests of
// its pieces. Not thread-safe.
class StateDigestBuilder {
 public:
  explicit StateDigestBuilder(uint32_t format_version);

  // Starts the next tensor, of `bytes` bytes; the previous one must be complete.
  void BeginTensor(absl::string_view name, uint64_t bytes);
  // The current tensor's next bytes.
  void AddBytes(const void* data, size_t bytes);
  // Whether the current tensor's next `bytes` bytes are one whole piece, so
  // that AddPiece may stand in for AddBytes: format 2, at a piece boundary,
  // and `bytes` is kStateDigestPieceBytes or all that is left of the tensor.
  bool IsPiece(size_t bytes) const;
  // The SHA-256 of the current tensor's next piece, `bytes` long; only where
  // IsPiece(bytes).
  void AddPiece(const Sha256Digest& digest, size_t bytes);
  // The hex digest; the last tensor must be complete.
  std::string Finish();

 private:
  void EndPiece();

  const uint32_t format_version_;
  Sha256 state_;
  Sha256 piece_;              // format 2: the piece being hashed
  size_t piece_bytes_ = 0;    // bytes of the current piece so far
  uint64_t tensor_left_ = 0;  // bytes of the current tensor still to come
};

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_DIGEST_H_
