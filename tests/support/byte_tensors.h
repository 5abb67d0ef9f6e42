// Test support: checkpoint state made of named byte strings, for the store's
// tests (which care about bytes, not about what the tensors mean).
#ifndef TANDEM_TESTS_SUPPORT_BYTE_TENSORS_H_
#define TANDEM_TESTS_SUPPORT_BYTE_TENSORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_store.h"

namespace tandem::testing {

// Deterministic bytes that differ for every seed.
inline std::string Pattern(size_t size, uint32_t seed) {
  std::string bytes(size, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (char& c : bytes) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return bytes;
}

// A tensor that owns its bytes; saved as uint8 of shape [bytes.size()].
struct Owned {
  std::string name;
  std::string bytes;
};

// Views of `tensors` for CheckpointStore::Save; they borrow the bytes.
inline std::vector<TensorView> Views(const std::vector<Owned>& tensors) {
  std::vector<TensorView> views;
  for (const Owned& t : tensors) {
    views.push_back({t.name,
                     v1::DTYPE_UINT8,
                     {static_cast<int64_t>(t.bytes.size())},
                     t.bytes.data(),
                     t.bytes.size()});
  }
  return views;
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_BYTE_TENSORS_H_
