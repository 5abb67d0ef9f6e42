#include "checkpoint/digest.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>

#include "checkpoint/checkpoint_store.h"

namespace tandem {
namespace {

// EVP's SHA-256 fails only when OpenSSL cannot allocate or is broken; no
// caller could recover, and a wrong digest would be worse than stopping.
void CheckEvp(int ok, const char* what) {
  if (ok == 1) return;
  std::fprintf(stderr, "tandem: OpenSSL %s failed for SHA-256\n", what);
  std::abort();
}

}  // namespace

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  if (impl_->ctx == nullptr) CheckEvp(0, "EVP_MD_CTX_new");
  CheckEvp(EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr), "EVP_DigestInit_ex");
}

Sha256::~Sha256() { EVP_MD_CTX_free(impl_->ctx); }

void Sha256::Update(const void* data, size_t bytes) {
  if (bytes == 0) return;
  CheckEvp(EVP_DigestUpdate(impl_->ctx, data, bytes), "EVP_DigestUpdate");
}

Sha256Digest Sha256::Finish() {
  Sha256Digest digest{};
  unsigned int len = 0;
  CheckEvp(EVP_DigestFinal_ex(impl_->ctx, digest.data(), &len), "EVP_DigestFinal_ex");
  if (len != digest.size()) CheckEvp(0, "EVP_DigestFinal_ex (length)");
  // Ready for the next message, so one object can hash many chunks.
  CheckEvp(EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr), "EVP_DigestInit_ex");
  return digest;
}

Sha256Digest Sha256Of(const void* data, size_t bytes) {
  Sha256 sha;
  sha.Update(data, bytes);
  return sha.Finish();
}

std::string ToHex(const uint8_t* data, size_t bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex(2 * bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) {
    hex[2 * i] = kDigits[data[i] >> 4];
    hex[2 * i + 1] = kDigits[data[i] & 0xf];
  }
  return hex;
}

std::string StateDigest(const std::vector<TensorView>& tensors) {
  Sha256 sha;
  for (const TensorView& t : tensors) {
    sha.Update(t.name.data(), t.name.size());
    const uint8_t nul = 0;
    sha.Update(&nul, 1);
    uint8_t size_le[8];
    uint64_t size = t.bytes;
    for (uint8_t& b : size_le) {
      b = static_cast<uint8_t>(size & 0xff);
      size >>= 8;
    }
    sha.Update(size_le, sizeof(size_le));
    sha.Update(t.data, t.bytes);
  }
  return ToHex(sha.Finish());
}

}  // namespace tandem
