#include "checkpoint/digest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "blake3.h"
#include "checkpoint/checkpoint_store.h"

namespace tandem {
namespace {

// StateDigest hashes pieces on this many threads (the caller's and helpers).
constexpr int kDigestThreads = 2;

void LittleEndian64(uint64_t value, uint8_t out[8]) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(value & 0xff);
    value >>= 8;
  }
}

void AddTensorHeader(Sha256& sha, absl::string_view name, uint64_t bytes) {
  sha.Update(name.data(), name.size());
  const uint8_t nul = 0;
  sha.Update(&nul, 1);
  uint8_t size_le[8];
  LittleEndian64(bytes, size_le);
  sha.Update(size_le, sizeof(size_le));
}

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

Hash256 Sha256::Finish() {
  Hash256 digest{};
  unsigned int len = 0;
  CheckEvp(EVP_DigestFinal_ex(impl_->ctx, digest.data(), &len), "EVP_DigestFinal_ex");
  if (len != digest.size()) CheckEvp(0, "EVP_DigestFinal_ex (length)");
  // Ready for the next message, so one object can hash many chunks.
  CheckEvp(EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr), "EVP_DigestInit_ex");
  return digest;
}

struct Blake3::Impl {
  blake3_hasher hasher;
};

Blake3::Blake3() : impl_(std::make_unique<Impl>()) { blake3_hasher_init(&impl_->hasher); }

Blake3::~Blake3() = default;

void Blake3::Update(const void* data, size_t bytes) {
  if (bytes == 0) return;
  blake3_hasher_update(&impl_->hasher, data, bytes);
}

Hash256 Blake3::Finish() {
  Hash256 hash{};
  blake3_hasher_finalize(&impl_->hasher, hash.data(), hash.size());
  blake3_hasher_init(&impl_->hasher);
  return hash;
}

Hash256 Sha256Of(const void* data, size_t bytes) {
  Sha256 sha;
  sha.Update(data, bytes);
  return sha.Finish();
}

Hash256 Blake3Of(const void* data, size_t bytes) {
  Blake3 blake3;
  blake3.Update(data, bytes);
  return blake3.Finish();
}

Hash256 PieceHashOf(uint32_t format_version, const void* data, size_t bytes) {
  return format_version >= 3 ? Blake3Of(data, bytes) : Sha256Of(data, bytes);
}

const char* PieceHashName(uint32_t format_version) {
  return format_version >= 3 ? "BLAKE3" : "SHA-256";
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

std::string StateDigest(const std::vector<TensorView>& tensors, uint32_t format_version) {
  if (format_version < 2) return StateDigestV1(tensors);
  struct Piece {
    const uint8_t* data;
    size_t bytes;
  };
  std::vector<Piece> pieces;
  for (const TensorView& t : tensors) {
    const auto* data = static_cast<const uint8_t*>(t.data);
    for (size_t offset = 0; offset < t.bytes; offset += kStateDigestPieceBytes) {
      pieces.push_back({data + offset, std::min(kStateDigestPieceBytes, t.bytes - offset)});
    }
  }
  std::vector<Hash256> digests(pieces.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next.fetch_add(1); i < pieces.size(); i = next.fetch_add(1)) {
      digests[i] = PieceHashOf(format_version, pieces[i].data, pieces[i].bytes);
    }
  };
  {
    std::vector<std::thread> helpers;
    for (int h = 1; h < kDigestThreads && static_cast<size_t>(h) < pieces.size(); ++h) {
      helpers.emplace_back(work);
    }
    work();
    for (std::thread& h : helpers) h.join();
  }
  StateDigestBuilder builder(format_version);
  size_t next_piece = 0;
  for (const TensorView& t : tensors) {
    builder.BeginTensor(t.name, t.bytes);
    for (size_t offset = 0; offset < t.bytes; offset += kStateDigestPieceBytes) {
      builder.AddPiece(digests[next_piece], pieces[next_piece].bytes);
      ++next_piece;
    }
  }
  return builder.Finish();
}

std::string StateDigestV1(const std::vector<TensorView>& tensors) {
  StateDigestBuilder builder(1);
  for (const TensorView& t : tensors) {
    builder.BeginTensor(t.name, t.bytes);
    builder.AddBytes(t.data, t.bytes);
  }
  return builder.Finish();
}

StateDigestBuilder::StateDigestBuilder(uint32_t format_version) : format_version_(format_version) {}

void StateDigestBuilder::BeginTensor(absl::string_view name, uint64_t bytes) {
  AddTensorHeader(state_, name, bytes);
  tensor_left_ = bytes;
  piece_bytes_ = 0;
}

void StateDigestBuilder::AddBytes(const void* data, size_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  tensor_left_ -= std::min<uint64_t>(bytes, tensor_left_);
  if (format_version_ < 2) {
    state_.Update(p, bytes);
    return;
  }
  while (bytes > 0) {
    const size_t n = std::min(bytes, kStateDigestPieceBytes - piece_bytes_);
    if (format_version_ >= 3) {
      piece_blake3_.Update(p, n);
    } else {
      piece_sha256_.Update(p, n);
    }
    piece_bytes_ += n;
    p += n;
    bytes -= n;
    if (piece_bytes_ == kStateDigestPieceBytes) EndPiece();
  }
  if (tensor_left_ == 0 && piece_bytes_ > 0) EndPiece();
}

bool StateDigestBuilder::IsPiece(size_t bytes) const {
  return format_version_ >= 2 && piece_bytes_ == 0 && bytes > 0 && bytes <= tensor_left_ &&
         (bytes == kStateDigestPieceBytes || bytes == tensor_left_) &&
         bytes <= kStateDigestPieceBytes;
}

void StateDigestBuilder::AddPiece(const Hash256& piece_hash, size_t bytes) {
  state_.Update(piece_hash.data(), piece_hash.size());
  tensor_left_ -= std::min<uint64_t>(bytes, tensor_left_);
}

void StateDigestBuilder::EndPiece() {
  const Hash256 piece_hash = format_version_ >= 3 ? piece_blake3_.Finish() : piece_sha256_.Finish();
  state_.Update(piece_hash.data(), piece_hash.size());
  piece_bytes_ = 0;
}

std::string StateDigestBuilder::Finish() { return ToHex(state_.Finish()); }

}  // namespace tandem
