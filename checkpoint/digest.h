// SHA-256 and BLAKE3 over bytes, and the state digest of a set of tensors:
// what two runs (or two clouds) compare to know their parameters and optimizer
// state are bitwise identical, and what a checkpoint's manifest records.
//
// The state digest hashes each tensor in pieces of kStateDigestPieceBytes and
// then the pieces' hashes (formats 2 and 3), so that it needs no pass over the
// bytes of its own: a store whose chunks are those pieces computes it from its
// chunk keys. Format 3 hashes the pieces (and the store its chunks) with
// BLAKE3, ~3x faster than SHA-256 here even with the CPU's SHA instructions;
// format 2 used SHA-256, format 1 a single SHA-256 over all the bytes
// (StateDigestV1). Manifests of formats 1 and 2 stay verifiable by their
// definitions.
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

// A 32-byte hash: SHA-256, or BLAKE3's default output.
using Hash256 = std::array<uint8_t, 32>;

// Incremental SHA-256 (OpenSSL's EVP). Not thread-safe; one per thread.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t bytes);
  // Returns the digest of everything passed to Update and starts a new message.
  Hash256 Finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Incremental BLAKE3 with its default 32-byte output (the BLAKE3 team's C
// implementation, which picks SSE4.1, AVX2 or AVX-512 at run time). Not
// thread-safe; one per thread.
class Blake3 {
 public:
  Blake3();
  ~Blake3();
  Blake3(const Blake3&) = delete;
  Blake3& operator=(const Blake3&) = delete;

  void Update(const void* data, size_t bytes);
  // Returns the hash of everything passed to Update and starts a new message.
  Hash256 Finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Hash256 Sha256Of(const void* data, size_t bytes);
Hash256 Blake3Of(const void* data, size_t bytes);
std::string ToHex(const uint8_t* data, size_t bytes);
inline std::string ToHex(const Hash256& d) { return ToHex(d.data(), d.size()); }

// The state digest format this build writes (and a checkpoint store's
// manifest format): 3.
inline constexpr uint32_t kStateDigestFormat = 3;

// The hash of a piece of a tensor under state digest format
// `format_version`, which is also the key of a chunk in a store's manifest of
// that format: BLAKE3 from format 3, SHA-256 before.
Hash256 PieceHashOf(uint32_t format_version, const void* data, size_t bytes);
// "BLAKE3" or "SHA-256": PieceHashOf's hash, for messages.
const char* PieceHashName(uint32_t format_version);

// The state digest hashes tensors in pieces of this many bytes; a
// CheckpointStore with chunks of this size gets it from its chunk keys.
inline constexpr size_t kStateDigestPieceBytes = 4 << 20;

// Hex SHA-256 over, for each tensor in order: its name, a NUL, its byte count
// (8 bytes little endian), then the 32-byte PieceHashOf each consecutive
// kStateDigestPieceBytes piece of its bytes (the last piece may be shorter;
// an empty tensor has none): BLAKE3 in format 3, SHA-256 in format 2. Hashes
// the pieces on two threads.
std::string StateDigest(const std::vector<TensorView>& tensors,
                        uint32_t format_version = kStateDigestFormat);

// Hex SHA-256 over, for each tensor in order: its name, a NUL, its byte count
// (8 bytes little endian) and its bytes. The digest of manifest format 1.
std::string StateDigestV1(const std::vector<TensorView>& tensors);

// Computes the state digest of a manifest of format `format_version` (1:
// StateDigestV1, 2 and 3: StateDigest) from tensors given one after another,
// each as its bytes in order or, from format 2, partly or wholly as the
// hashes of its pieces. Not thread-safe.
class StateDigestBuilder {
 public:
  explicit StateDigestBuilder(uint32_t format_version);

  // Starts the next tensor, of `bytes` bytes; the previous one must be complete.
  void BeginTensor(absl::string_view name, uint64_t bytes);
  // The current tensor's next bytes.
  void AddBytes(const void* data, size_t bytes);
  // Whether the current tensor's next `bytes` bytes are one whole piece, so
  // that AddPiece may stand in for AddBytes: format 2 or later, at a piece boundary,
  // and `bytes` is kStateDigestPieceBytes or all that is left of the tensor.
  bool IsPiece(size_t bytes) const;
  // The PieceHashOf the current tensor's next piece, `bytes` long; only where
  // IsPiece(bytes).
  void AddPiece(const Hash256& piece_hash, size_t bytes);
  // The hex digest; the last tensor must be complete.
  std::string Finish();

 private:
  void EndPiece();

  const uint32_t format_version_;
  Sha256 state_;
  Sha256 piece_sha256_;       // format 2: the piece being hashed
  Blake3 piece_blake3_;       // format 3: the piece being hashed
  size_t piece_bytes_ = 0;    // bytes of the current piece so far
  uint64_t tensor_left_ = 0;  // bytes of the current tensor still to come
};

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_DIGEST_H_
