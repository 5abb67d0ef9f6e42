// Export and import of PyTorch state_dict files: the zip archive that Python's
// `torch.save(model.state_dict(), path)` writes (the default format since
// torch 1.6) and `torch.load(path)` reads.
//
// Neither call uses libtorch: the archive is a stored (uncompressed) zip that
// this code writes and reads itself, with a small pickle writer and a pickle
// reader that understands what torch.save emits for a dict of tensors. Every
// record's CRC-32 is checked on read, so a corrupt file is reported rather
// than loaded.
//
// Both functions are thread-safe (they share no state). Errors name the file
// and say what is wrong with it.
#ifndef TANDEM_CHECKPOINT_TORCH_FILE_H_
#define TANDEM_CHECKPOINT_TORCH_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/checkpoint_store.h"

namespace tandem {

// Writes `tensors` to `path` as a state_dict file: `torch.load(path)` returns
// an OrderedDict mapping each name, in order, to a CPU tensor with the same
// dtype, shape and bytes (`data` is read as row-major, little-endian). The file
// is written under a temporary name in the same directory, synced and renamed
// over `path`, so `path` holds either its old contents or the whole new file.
//
// InvalidArgument for an empty, duplicate or non-UTF-8 name, an unspecified
// dtype, a negative dimension, or `bytes` that do not match the shape (or
// bytes without data); NotFound if the directory does not exist; other I/O
// errors as their errno maps (ResourceExhausted for a full disk, ...).
absl::Status WriteStateDict(const std::string& path, const std::vector<TensorView>& tensors);

// Reads a state_dict file written by WriteStateDict or by Python's torch.save
// (zip format; pickle protocols 2 to 4): the top-level object must be a dict or
// OrderedDict (its `_metadata` is ignored) from str to tensor. Tensors come
// back in file order with their bytes contiguous and row-major; views into a
// shared storage, storage offsets and any strides (transposed, expanded) are
// resolved, and nn.Parameters read as their data. Tensors saved from a GPU
// read as their bytes.
//
// NotFound if `path` does not exist; InvalidArgument if it is not a zip
// archive, is a zip but not a torch.save file (or is the legacy pre-1.6
// format, or TorchScript), holds an unsupported dtype (int32, bool, ...), a
// non-tensor value, or a pickle opcode or callable this reader does not know
// (named in the message); DataLoss if the archive is truncated or a record
// fails its CRC or lies outside the file.
absl::StatusOr<std::vector<StoredTensor>> ReadStateDict(const std::string& path);

namespace internal {

// WriteStateDict that uses zip64 records for every size and offset at or above
// `zip64_threshold` (WriteStateDict uses 0xFFFFFFFF, where zip requires them);
// 0 forces zip64 everywhere, which lets tests cover what a 4 GiB file needs.
absl::Status WriteStateDict(const std::string& path, const std::vector<TensorView>& tensors,
                            uint64_t zip64_threshold);

}  // namespace internal
}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_TORCH_FILE_H_
