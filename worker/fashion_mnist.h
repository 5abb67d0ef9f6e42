// Fashion-MNIST from the gzipped IDX files of Debian's dataset-fashion-mnist
// package (or any folder holding the same four files).
//
// The whole split is read into memory (47 MB of pixels for the training set):
// every rank keeps its own copy and picks its samples by index. Errors name the
// file and what is wrong with it: missing, not gzip, truncated, a bad IDX
// header, or image and label counts that disagree.
#ifndef TANDEM_WORKER_FASHION_MNIST_H_
#define TANDEM_WORKER_FASHION_MNIST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tandem {

// One IDX array of unsigned bytes: dims from the header, data row-major.
struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

// Reads a gzipped IDX file of type unsigned byte (magic 0x0000 08 NN).
absl::StatusOr<IdxArray> ReadIdxGz(const std::string& path);

struct MnistSplit {
  uint32_t count = 0;
  uint32_t rows = 0;
  uint32_t cols = 0;
  std::vector<uint8_t> images;  // count * rows * cols
  std::vector<uint8_t> labels;  // count, each in [0, 10)
};

enum class Split { kTrain, kTest };

// Loads `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` from `dir`.
absl::StatusOr<MnistSplit> LoadFashionMnist(const std::string& dir, Split split);

// Normalisation constants of the Fashion-MNIST training set.
inline constexpr float kFashionMnistMean = 0.2860f;
inline constexpr float kFashionMnistStd = 0.3530f;

}  // namespace tandem

#endif  // TANDEM_WORKER_FASHION_MNIST_H_
