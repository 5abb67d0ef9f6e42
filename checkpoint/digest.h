// SHA-256 over bytes, and the state digest of a set of tensors: what two runs
// (or two clouds) compare to know their parameters and optimizer state are
// bitwise identical.
#ifndef TANDEM_CHECKPOINT_DIGEST_H_
#define TANDEM_CHECKPOINT_DIGEST_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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

// Hex SHA-256 over, for each tensor in order: its name, a NUL, its byte count
// (8 bytes little endian) and its bytes.
std::string StateDigest(const std::vector<TensorView>& tensors);

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_DIGEST_H_
