#include "transport/codecs/wire.h"

#include "absl/strings/str_cat.h"

namespace tandem::codec_internal {
namespace {

constexpr char kMagic[4] = {'T', 'D', 'C', 'G'};

uint64_t LoadU64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

absl::string_view RoleName(uint8_t role) {
  switch (role) {
    case static_cast<uint8_t>(PayloadRole::kComplete):
      return "a complete step";
    case static_cast<uint8_t>(PayloadRole::kPowerSgdP):
      return "PowerSGD round 1 (P)";
    case static_cast<uint8_t>(PayloadRole::kPowerSgdQ):
      return "PowerSGD round 2 (Q)";
  }
  return "an unknown round";
}

}  // namespace

absl::string_view KindName(v1::CodecKind kind) {
  switch (kind) {
    case v1::CODEC_KIND_NONE:
      return "none";
    case v1::CODEC_KIND_FP16:
      return "fp16";
    case v1::CODEC_KIND_BF16:
      return "bf16";
    case v1::CODEC_KIND_INT8:
      return "int8";
    case v1::CODEC_KIND_TOPK:
      return "topk";
    case v1::CODEC_KIND_POWERSGD:
      return "powersgd";
    default:
      return "unknown";
  }
}

char* StartPayload(const Header& header, size_t body_size, std::string* payload) {
  payload->resize(kHeaderSize + body_size);
  char* p = payload->data();
  std::memcpy(p, kMagic, sizeof kMagic);
  p[4] = static_cast<char>(header.kind);
  p[5] = static_cast<char>(kCodecWireVersion);
  p[6] = static_cast<char>(header.role);
  p[7] = 0;
  std::memcpy(p + 8, &header.n, sizeof header.n);
  std::memcpy(p + 16, &header.config, sizeof header.config);
  return p + kHeaderSize;
}

absl::StatusOr<absl::string_view> ParseHeader(const std::string& payload, const Header& expected) {
  if (payload.size() < kHeaderSize) {
    return absl::DataLossError(absl::StrCat("codec payload truncated: ", payload.size(),
                                            " bytes, shorter than its ", kHeaderSize,
                                            "-byte header"));
  }
  const char* p = payload.data();
  if (std::memcmp(p, kMagic, sizeof kMagic) != 0) {
    return absl::DataLossError("not a codec payload (bad magic)");
  }
  const auto kind = static_cast<v1::CodecKind>(static_cast<uint8_t>(p[4]));
  if (kind != expected.kind) {
    return absl::InvalidArgumentError(absl::StrCat("payload encoded by codec ", KindName(kind),
                                                   " (", static_cast<int>(kind),
                                                   "), this codec is ", KindName(expected.kind)));
  }
  const auto version = static_cast<uint8_t>(p[5]);
  if (version != kCodecWireVersion) {
    return absl::InvalidArgumentError(absl::StrCat("payload of codec format version ", version,
                                                   ", this build reads version ",
                                                   kCodecWireVersion));
  }
  const auto role = static_cast<uint8_t>(p[6]);
  if (role != static_cast<uint8_t>(expected.role)) {
    return absl::InvalidArgumentError(absl::StrCat("payload is ", RoleName(role), ", expected ",
                                                   RoleName(static_cast<uint8_t>(expected.role))));
  }
  const uint64_t n = LoadU64(p + 8);
  if (n != expected.n) {
    return absl::InvalidArgumentError(absl::StrCat("payload holds a gradient of ", n,
                                                   " elements, this codec's has ", expected.n));
  }
  if (LoadU64(p + 16) != expected.config) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload made by a differently configured ", KindName(kind),
                     " codec (tensor shapes, rank, ratio or chunk differ)"));
  }
  return absl::string_view(payload).substr(kHeaderSize);
}

absl::Status CheckSize(size_t given, size_t expected) {
  if (given == expected) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("gradient of ", given, " elements given, the codec was made for ", expected));
}

absl::StatusOr<const char*> Reader::Take(size_t bytes) {
  if (bytes > remaining()) {
    return absl::DataLossError(absl::StrCat("codec payload body truncated: needs ", bytes,
                                            " more bytes at offset ", pos_, ", has ", remaining()));
  }
  const char* p = data_.data() + pos_;
  pos_ += bytes;
  return p;
}

absl::StatusOr<uint64_t> Reader::Varint() {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos_ >= data_.size()) return absl::DataLossError("codec payload truncated inside a varint");
    const auto byte = static_cast<uint8_t>(data_[pos_++]);
    v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return v;
  }
  return absl::DataLossError("codec payload has a varint longer than 64 bits");
}

absl::Status LoadErrorState(v1::CodecKind kind, size_t n, const CodecState& state,
                            std::vector<float>* error) {
  if (state.size() != 1 || state[0].first != kCodecErrorState || state[0].second.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(KindName(kind),
                                                   " codec state must be exactly \"",
                                                   kCodecErrorState, "\" of ", n, " floats"));
  }
  *error = state[0].second;
  return absl::OkStatus();
}

}  // namespace tandem::codec_internal
