#include "worker/fashion_mnist.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/strings/str_format.h"

namespace tandem {
namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

std::string GzError(gzFile f) {
  int code = 0;
  const char* text = gzerror(f, &code);
  if (code == Z_ERRNO) return std::strerror(errno);
  return text == nullptr ? "unknown zlib error" : text;
}

// Reads exactly `bytes` bytes or explains why not.
absl::Status ReadExactly(gzFile f, const std::string& path, void* out, size_t bytes,
                         const char* what) {
  auto* p = static_cast<char*>(out);
  size_t done = 0;
  while (done < bytes) {
    const unsigned want = static_cast<unsigned>(std::min<size_t>(bytes - done, 1u << 30));
    const int n = gzread(f, p + done, want);
    if (n < 0) {
      return absl::DataLossError(absl::StrFormat("%s: corrupt gzip data while reading the %s: %s",
                                                 path, what, GzError(f)));
    }
    if (n == 0) {
      return absl::DataLossError(
          absl::StrFormat("%s: file is truncated: the %s needs %d bytes, only %d are there", path,
                          what, bytes, done));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<IdxArray> ReadIdxGz(const std::string& path) {
  GzFile file(gzopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrFormat("%s: cannot open: %s", path, std::strerror(errno)));
  }
  unsigned char magic[4];
  absl::Status status = ReadExactly(file.get(), path, magic, sizeof(magic), "IDX header");
  if (!status.ok()) return status;
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] == 0 || magic[3] > 4) {
    return absl::DataLossError(absl::StrFormat(
        "%s: not an unsigned-byte IDX file (magic %02x%02x%02x%02x, expected 000008NN)", path,
        magic[0], magic[1], magic[2], magic[3]));
  }
  IdxArray array;
  size_t total = 1;
  for (int i = 0; i < magic[3]; ++i) {
    unsigned char be[4];
    status = ReadExactly(file.get(), path, be, sizeof(be), "IDX header");
    if (!status.ok()) return status;
    const uint32_t dim = (uint32_t{be[0]} << 24) | (uint32_t{be[1]} << 16) |
                         (uint32_t{be[2]} << 8) | uint32_t{be[3]};
    if (dim == 0 || dim > (1u << 24)) {
      return absl::DataLossError(
          absl::StrFormat("%s: IDX dimension %d is %d, out of range", path, i, dim));
    }
    array.dims.push_back(dim);
    total *= dim;
  }
  if (total > (size_t{1} << 32)) {
    return absl::DataLossError(absl::StrFormat("%s: IDX header claims %d bytes", path, total));
  }
  array.data.resize(total);
  status = ReadExactly(file.get(), path, array.data.data(), total, "IDX data");
  if (!status.ok()) return status;
  // Reading past the end makes zlib check the gzip trailer (CRC and length).
  char extra;
  const int n = gzread(file.get(), &extra, 1);
  if (n < 0) {
    return absl::DataLossError(
        absl::StrFormat("%s: gzip checksum failed: %s", path, GzError(file.get())));
  }
  if (n > 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s: trailing bytes after the %d bytes the IDX header announces", path, total));
  }
  return array;
}

absl::StatusOr<MnistSplit> LoadFashionMnist(const std::string& dir, Split split) {
  const std::string prefix = dir + (split == Split::kTrain ? "/train" : "/t10k");
  const std::string images_path = prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";
  absl::StatusOr<IdxArray> images = ReadIdxGz(images_path);
  if (!images.ok()) return images.status();
  absl::StatusOr<IdxArray> labels = ReadIdxGz(labels_path);
  if (!labels.ok()) return labels.status();
  if (images->dims.size() != 3) {
    return absl::DataLossError(absl::StrFormat(
        "%s: expected 3 dimensions (count, rows, cols), got %d", images_path, images->dims.size()));
  }
  if (labels->dims.size() != 1) {
    return absl::DataLossError(absl::StrFormat("%s: expected 1 dimension (count), got %d",
                                               labels_path, labels->dims.size()));
  }
  if (images->dims[0] != labels->dims[0]) {
    return absl::DataLossError(absl::StrFormat("%s has %d images but %s has %d labels", images_path,
                                               images->dims[0], labels_path, labels->dims[0]));
  }
  for (size_t i = 0; i < labels->data.size(); ++i) {
    if (labels->data[i] >= 10) {
      return absl::DataLossError(absl::StrFormat("%s: label %d is %d, not a class in [0, 10)",
                                                 labels_path, i, labels->data[i]));
    }
  }
  MnistSplit out;
  out.count = images->dims[0];
  out.rows = images->dims[1];
  out.cols = images->dims[2];
  out.images = std::move(images->data);
  out.labels = std::move(labels->data);
  return out;
}

}  // namespace tandem
