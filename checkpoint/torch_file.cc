#include "checkpoint/torch_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tandem {
namespace {

// Tensor bytes go to and from the file as they lie in memory, and torch.save's
// format is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "torch_file assumes a little-endian host");

#define TANDEM_RETURN_IF_ERROR(expr)   \
  do {                                 \
    absl::Status _status = (expr);     \
    if (!_status.ok()) return _status; \
  } while (0)

// ---------------------------------------------------------------------------
// Dtypes: how torch.save names the storage of each dtype.

struct DTypeInfo {
  v1::DType dtype;
  const char* storage;  // class in module `torch`
  const char* name;     // as Python prints torch.dtype, less "torch."
  size_t itemsize;
};

constexpr DTypeInfo kDTypes[] = {
    {v1::DTYPE_FLOAT32, "FloatStorage", "float32", 4},
    {v1::DTYPE_FLOAT64, "DoubleStorage", "float64", 8},
    {v1::DTYPE_INT64, "LongStorage", "int64", 8},
    {v1::DTYPE_UINT8, "ByteStorage", "uint8", 1},
    {v1::DTYPE_FLOAT16, "HalfStorage", "float16", 2},
    {v1::DTYPE_BFLOAT16, "BFloat16Storage", "bfloat16", 2},
};

// Storages torch can save that have no tandem dtype, so errors can name them.
constexpr std::pair<const char*, const char*> kUnsupportedStorages[] = {
    {"IntStorage", "int32"},
    {"ShortStorage", "int16"},
    {"CharStorage", "int8"},
    {"BoolStorage", "bool"},
    {"ComplexFloatStorage", "complex64"},
    {"ComplexDoubleStorage", "complex128"},
    {"ComplexHalfStorage", "complex32"},
    {"QInt8Storage", "qint8"},
    {"QUInt8Storage", "quint8"},
    {"QInt32Storage", "qint32"},
    {"QUInt4x2Storage", "quint4x2"},
    {"QUInt2x4Storage", "quint2x4"},
};

constexpr char kSupportedDTypes[] = "float32, float64, int64, uint8, float16, bfloat16";

const DTypeInfo* FindDType(v1::DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

const DTypeInfo* FindStorage(std::string_view storage) {
  for (const DTypeInfo& info : kDTypes) {
    if (storage == info.storage) return &info;
  }
  return nullptr;
}

const char* UnsupportedStorageDType(std::string_view storage) {
  for (const auto& [name, dtype] : kUnsupportedStorages) {
    if (storage == name) return dtype;
  }
  return nullptr;
}

// Row-major strides as torch computes them (a zero-sized dimension counts as 1).
std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

// Element count of `shape`, or false if a dimension is negative or the count
// (times `itemsize`) overflows.
bool CountElements(const std::vector<int64_t>& shape, size_t itemsize, uint64_t* numel) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(n, itemsize, &bytes) || bytes > static_cast<uint64_t>(INT64_MAX)) {
    return false;
  }
  *numel = n;
  return true;
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t extra;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Little-endian encoding.

void Put16(std::string* out, uint16_t v) {
  char b[2];
  std::memcpy(b, &v, 2);
  out->append(b, 2);
}
void Put32(std::string* out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out->append(b, 4);
}
void Put64(std::string* out, uint64_t v) {
  char b[8];
  std::memcpy(b, &v, 8);
  out->append(b, 8);
}
uint16_t Get16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
uint32_t Get32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t Get64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint32_t Crc32(const void* data, size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (size > 0) {
    const uInt n = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    size -= n;
  }
  return static_cast<uint32_t>(crc);
}

std::string Prefix(const std::string& path) { return absl::StrCat("torch file ", path, ": "); }

absl::Status Invalid(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(Prefix(path), what));
}
absl::Status Corrupt(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(Prefix(path), what));
}
absl::Status Errno(int err, const std::string& path, absl::string_view what) {
  return absl::ErrnoToStatus(err, absl::StrCat(Prefix(path), what));
}

class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }
  // Closes now, reporting what close() says (a delayed write error, on NFS).
  int Close() { return ::close(std::exchange(fd_, -1)); }

 private:
  int fd_;
};

// ---------------------------------------------------------------------------
// Zip container: stored (uncompressed) records, as torch's own writer makes.

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kEnd64Size = 56;
constexpr size_t kEnd64LocatorSize = 20;
constexpr uint64_t kMax32 = 0xFFFFFFFF;
constexpr uint64_t kMax16 = 0xFFFF;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB", torch's padding field
// Record data starts at a multiple of this, as in torch's writer, so a reader
// can map tensors straight from the file.
constexpr uint64_t kDataAlignment = 64;
constexpr uint16_t kVersionZip64 = 45;
constexpr uint16_t kVersionMadeBy = (3 << 8) | kVersionZip64;  // Unix
constexpr uint16_t kGeneralFlagUtf8 = 1 << 11;
constexpr uint16_t kDosDate = (1 << 5) | 1;  // 1980-01-01: files carry no meaningful time

// Appends to a file through a buffer and counts the offset.
class FileSink {
 public:
  FileSink(int fd, const std::string& path) : fd_(fd), path_(path) { buf_.reserve(kBufferSize); }

  absl::Status Append(const void* data, size_t size) {
    if (size == 0) return absl::OkStatus();
    const char* p = static_cast<const char*>(data);
    offset_ += size;
    if (buf_.size() + size <= kBufferSize) {
      buf_.append(p, size);
      return absl::OkStatus();
    }
    TANDEM_RETURN_IF_ERROR(Flush());
    if (size < kBufferSize) {
      buf_.append(p, size);
      return absl::OkStatus();
    }
    return WriteAll(p, size);
  }
  absl::Status Append(std::string_view s) { return Append(s.data(), s.size()); }

  absl::Status Flush() {
    absl::Status status = WriteAll(buf_.data(), buf_.size());
    buf_.clear();
    return status;
  }

  uint64_t offset() const { return offset_; }

 private:
  static constexpr size_t kBufferSize = 1 << 20;

  absl::Status WriteAll(const char* p, size_t size) {
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, std::min<size_t>(size, 1 << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Errno(errno, path_, "writing");
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  int fd_;
  const std::string& path_;
  std::string buf_;
  uint64_t offset_ = 0;
};

class ZipWriter {
 public:
  ZipWriter(FileSink* sink, uint64_t zip64_threshold)
      : sink_(sink), zip64_threshold_(zip64_threshold) {}

  absl::Status Add(const std::string& name, const void* data, uint64_t size) {
    Entry e{name, Crc32(data, size), size, sink_->offset()};
    const bool zip64 = size >= zip64_threshold_;
    std::string header;
    Put32(&header, kLocalHeaderSig);
    Put16(&header, kVersionZip64);
    Put16(&header, kGeneralFlagUtf8);
    Put16(&header, 0);  // stored
    Put16(&header, 0);  // time
    Put16(&header, kDosDate);
    Put32(&header, e.crc);
    Put32(&header, zip64 ? kMax32 : static_cast<uint32_t>(size));
    Put32(&header, zip64 ? kMax32 : static_cast<uint32_t>(size));
    std::string extra;
    if (zip64) {
      Put16(&extra, kZip64ExtraId);
      Put16(&extra, 16);
      Put64(&extra, size);
      Put64(&extra, size);
    }
    const uint64_t unpadded = e.offset + kLocalHeaderSize + name.size() + extra.size();
    if (unpadded % kDataAlignment != 0) {
      const uint64_t pad = (kDataAlignment - (unpadded + 4) % kDataAlignment) % kDataAlignment;
      Put16(&extra, kPaddingExtraId);
      Put16(&extra, static_cast<uint16_t>(pad));
      extra.append(pad, 'Z');
    }
    Put16(&header, static_cast<uint16_t>(name.size()));
    Put16(&header, static_cast<uint16_t>(extra.size()));
    header += name;
    header += extra;
    TANDEM_RETURN_IF_ERROR(sink_->Append(header));
    TANDEM_RETURN_IF_ERROR(sink_->Append(data, size));
    entries_.push_back(std::move(e));
    return absl::OkStatus();
  }

  absl::Status Finish() {
    const uint64_t cd_offset = sink_->offset();
    for (const Entry& e : entries_) {
      std::string extra;
      const bool size64 = e.size >= zip64_threshold_;
      const bool offset64 = e.offset >= zip64_threshold_;
      if (size64 || offset64) {
        Put16(&extra, kZip64ExtraId);
        Put16(&extra, static_cast<uint16_t>((size64 ? 16 : 0) + (offset64 ? 8 : 0)));
        if (size64) {
          Put64(&extra, e.size);
          Put64(&extra, e.size);
        }
        if (offset64) Put64(&extra, e.offset);
      }
      std::string h;
      Put32(&h, kCentralHeaderSig);
      Put16(&h, kVersionMadeBy);
      Put16(&h, kVersionZip64);
      Put16(&h, kGeneralFlagUtf8);
      Put16(&h, 0);  // stored
      Put16(&h, 0);  // time
      Put16(&h, kDosDate);
      Put32(&h, e.crc);
      Put32(&h, size64 ? kMax32 : static_cast<uint32_t>(e.size));
      Put32(&h, size64 ? kMax32 : static_cast<uint32_t>(e.size));
      Put16(&h, static_cast<uint16_t>(e.name.size()));
      Put16(&h, static_cast<uint16_t>(extra.size()));
      Put16(&h, 0);  // comment
      Put16(&h, 0);  // disk
      Put16(&h, 0);  // internal attributes
      Put32(&h, 0100644u << 16);
      Put32(&h, offset64 ? kMax32 : static_cast<uint32_t>(e.offset));
      h += e.name;
      h += extra;
      TANDEM_RETURN_IF_ERROR(sink_->Append(h));
    }
    const uint64_t cd_size = sink_->offset() - cd_offset;
    const uint64_t count = entries_.size();
    const bool count64 = count >= std::min(kMax16, zip64_threshold_);
    const bool size64 = cd_size >= zip64_threshold_;
    const bool offset64 = cd_offset >= zip64_threshold_;
    std::string end;
    if (count64 || size64 || offset64) {
      const uint64_t end64_offset = sink_->offset();
      Put32(&end, kEnd64Sig);
      Put64(&end, kEnd64Size - 12);
      Put16(&end, kVersionMadeBy);
      Put16(&end, kVersionZip64);
      Put32(&end, 0);  // this disk
      Put32(&end, 0);  // disk with the central directory
      Put64(&end, count);
      Put64(&end, count);
      Put64(&end, cd_size);
      Put64(&end, cd_offset);
      Put32(&end, kEnd64LocatorSig);
      Put32(&end, 0);
      Put64(&end, end64_offset);
      Put32(&end, 1);  // disks
    }
    Put32(&end, kEndSig);
    Put16(&end, 0);
    Put16(&end, 0);
    Put16(&end, count64 ? kMax16 : static_cast<uint16_t>(count));
    Put16(&end, count64 ? kMax16 : static_cast<uint16_t>(count));
    Put32(&end, size64 ? kMax32 : static_cast<uint32_t>(cd_size));
    Put32(&end, offset64 ? kMax32 : static_cast<uint32_t>(cd_offset));
    Put16(&end, 0);  // comment
    return sink_->Append(end);
  }

 private:
  struct Entry {
    std::string name;
    uint32_t crc;
    uint64_t size;
    uint64_t offset;
  };

  FileSink* sink_;
  uint64_t zip64_threshold_;
  std::vector<Entry> entries_;
};

absl::Status PreadAll(int fd, const std::string& path, void* buf, size_t size, uint64_t offset) {
  char* p = static_cast<char*>(buf);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno(errno, path, "reading");
    }
    if (n == 0) {
      return Corrupt(path,
                     absl::StrCat("unexpected end of file at byte ", offset, " (truncated?)"));
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

// Reads the records of a torch.save archive: every name has the archive's
// folder ("archive/", or the file's stem for torch 1.13) stripped.
class ZipReader {
 public:
  static absl::StatusOr<ZipReader> Open(const std::string& path);

  bool Has(const std::string& name) const { return entries_.count(name) > 0; }
  absl::StatusOr<std::string> Read(const std::string& name) const;
  const std::string& folder() const { return folder_; }

 private:
  struct Entry {
    uint16_t method;  // 0: stored; others are refused when read
    uint32_t crc;
    uint64_t size;
    uint64_t offset;
  };

  ZipReader(std::string path, ScopedFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
  absl::Status ReadDirectory();

  std::string path_;
  ScopedFd fd_;
  uint64_t file_size_ = 0;
  uint64_t directory_offset_ = 0;
  std::string folder_;
  std::unordered_map<std::string, Entry> entries_;
};

absl::StatusOr<ZipReader> ZipReader::Open(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(Prefix(path), "no such file"));
    return Errno(errno, path, "opening");
  }
  ZipReader reader(path, std::move(fd));
  TANDEM_RETURN_IF_ERROR(reader.ReadDirectory());
  return reader;
}

absl::Status ZipReader::ReadDirectory() {
  const std::string& path = path_;
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) return Errno(errno, path, "stat");
  if (S_ISDIR(st.st_mode)) return Invalid(path, "is a directory");
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (file_size_ == 0) return Invalid(path, "file is empty, not a torch.save archive");

  char magic[4] = {};
  TANDEM_RETURN_IF_ERROR(PreadAll(fd_.get(), path, magic, std::min<uint64_t>(4, file_size_), 0));
  if (std::memcmp(magic, "PK\3\4", 4) != 0) {
    if (std::memcmp(magic, "\x80\x02\x8a\x0a", 4) == 0) {
      return Invalid(path,
                     "legacy torch.save format (before torch 1.6, or "
                     "_use_new_zipfile_serialization=False) is not supported; load it in Python "
                     "and save it again with torch.save");
    }
    if (std::memcmp(magic, "PK\5\6", 4) == 0) {
      return Invalid(path, "an empty zip archive, not a torch.save file");
    }
    return Invalid(path,
                   absl::StrFormat(
                       "not a zip archive (first bytes %02x %02x %02x %02x), so not a "
                       "torch.save file",
                       static_cast<unsigned char>(magic[0]), static_cast<unsigned char>(magic[1]),
                       static_cast<unsigned char>(magic[2]), static_cast<unsigned char>(magic[3])));
  }

  // The end record is the last 22 bytes unless the archive has a comment.
  const uint64_t tail_size = std::min<uint64_t>(file_size_, kEndSize + kMax16);
  std::string tail(tail_size, '\0');
  TANDEM_RETURN_IF_ERROR(
      PreadAll(fd_.get(), path, tail.data(), tail.size(), file_size_ - tail_size));
  uint64_t end_offset = 0;
  bool found = false;
  for (size_t i = tail.size() >= kEndSize ? tail.size() - kEndSize + 1 : 0; i-- > 0;) {
    if (Get32(&tail[i]) == kEndSig && i + kEndSize + Get16(&tail[i + 20]) <= tail.size()) {
      end_offset = file_size_ - tail_size + i;
      found = true;
      break;
    }
  }
  if (!found) {
    return Corrupt(path,
                   "zip archive has no end-of-central-directory record: the file is truncated or "
                   "corrupt");
  }
  const char* end = &tail[end_offset - (file_size_ - tail_size)];
  if (Get16(end + 4) != 0 || Get16(end + 6) != 0) {
    return Invalid(path, "multi-volume zip archives are not supported");
  }
  uint64_t count = Get16(end + 10);
  uint64_t cd_size = Get32(end + 12);
  uint64_t cd_offset = Get32(end + 16);
  uint64_t cd_limit = end_offset;  // the directory ends before this

  // torch's writer always adds zip64 end records; they are authoritative.
  char locator[kEnd64LocatorSize];
  bool zip64 = false;
  if (end_offset >= kEnd64LocatorSize) {
    TANDEM_RETURN_IF_ERROR(
        PreadAll(fd_.get(), path, locator, sizeof(locator), end_offset - kEnd64LocatorSize));
    zip64 = Get32(locator) == kEnd64LocatorSig;
  }
  if (zip64) {
    const uint64_t end64_offset = Get64(locator + 8);
    if (end64_offset > end_offset - kEnd64LocatorSize ||
        end_offset - kEnd64LocatorSize - end64_offset < kEnd64Size) {
      return Corrupt(path, "zip64 end record lies outside the file: truncated or corrupt");
    }
    char end64[kEnd64Size];
    TANDEM_RETURN_IF_ERROR(PreadAll(fd_.get(), path, end64, sizeof(end64), end64_offset));
    if (Get32(end64) != kEnd64Sig) return Corrupt(path, "zip64 end record is corrupt");
    count = Get64(end64 + 32);
    cd_size = Get64(end64 + 40);
    cd_offset = Get64(end64 + 48);
    cd_limit = end64_offset;
  } else if (count == kMax16 || cd_size == kMax32 || cd_offset == kMax32) {
    return Corrupt(path, "zip archive needs zip64 end records but has none: corrupt");
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
    return Corrupt(path, "zip central directory lies outside the file: truncated or corrupt");
  }
  if (count > cd_size / kCentralHeaderSize) {
    return Corrupt(path, "zip central directory is too small for its entry count: corrupt");
  }
  directory_offset_ = cd_offset;
  std::string cd(cd_size, '\0');
  TANDEM_RETURN_IF_ERROR(PreadAll(fd_.get(), path, cd.data(), cd.size(), cd_offset));

  size_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (cd.size() - pos < kCentralHeaderSize || Get32(&cd[pos]) != kCentralHeaderSig) {
      return Corrupt(path, absl::StrCat("zip central directory entry ", i, " is corrupt"));
    }
    const char* h = &cd[pos];
    const uint16_t flags = Get16(h + 8);
    const uint16_t method = Get16(h + 10);
    Entry e;
    e.crc = Get32(h + 16);
    uint64_t compressed = Get32(h + 20);
    e.size = Get32(h + 24);
    const size_t name_len = Get16(h + 28);
    const size_t extra_len = Get16(h + 30);
    const size_t comment_len = Get16(h + 32);
    e.offset = Get32(h + 42);
    if (cd.size() - pos - kCentralHeaderSize < name_len + extra_len + comment_len) {
      return Corrupt(path, absl::StrCat("zip central directory entry ", i, " is corrupt"));
    }
    std::string name(h + kCentralHeaderSize, name_len);
    std::string_view extra(h + kCentralHeaderSize + name_len, extra_len);
    pos += kCentralHeaderSize + name_len + extra_len + comment_len;

    // A zip64 field holds, in this order, each of these that is 0xFFFFFFFF.
    uint64_t* wide[] = {&e.size, &compressed, &e.offset};
    bool needs64 = false;
    for (uint64_t* v : wide) needs64 |= *v == kMax32;
    while (needs64 && extra.size() >= 4) {
      const uint16_t id = Get16(extra.data());
      const size_t len = Get16(extra.data() + 2);
      if (len > extra.size() - 4) break;
      if (id == kZip64ExtraId) {
        std::string_view field = extra.substr(4, len);
        for (uint64_t* v : wide) {
          if (*v != kMax32) continue;
          if (field.size() < 8) {
            return Corrupt(path, absl::StrCat("zip64 field of '", name, "' is too short"));
          }
          *v = Get64(field.data());
          field.remove_prefix(8);
        }
        needs64 = false;
      }
      extra.remove_prefix(4 + len);
    }
    if (needs64) return Corrupt(path, absl::StrCat("zip entry '", name, "' lacks its zip64 field"));
    if (flags & 1) return Invalid(path, absl::StrCat("zip entry '", name, "' is encrypted"));
    e.method = method;
    if (method == 0 && compressed != e.size) {
      return Corrupt(path, absl::StrCat("zip entry '", name, "' is stored but its sizes differ"));
    }

    // As torch's reader: the first entry's folder is the archive's folder.
    if (i == 0) {
      const size_t slash = name.find('/');
      if (slash == std::string::npos) {
        return Invalid(path, absl::StrCat("zip entry '", name,
                                          "' is not in a folder: not a torch.save archive"));
      }
      folder_ = name.substr(0, slash + 1);
    }
    if (name.compare(0, folder_.size(), folder_) == 0) {
      entries_.emplace(name.substr(folder_.size()), e);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ZipReader::Read(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return Corrupt(path_, absl::StrCat("record '", folder_, name, "' is missing"));
  }
  const Entry& e = it->second;
  const std::string full = folder_ + name;
  if (e.method != 0) {
    return Invalid(path_, absl::StrCat("record '", full, "' is compressed (method ", e.method,
                                       "); torch.save stores records uncompressed"));
  }
  if (e.offset > directory_offset_ || directory_offset_ - e.offset < kLocalHeaderSize) {
    return Corrupt(path_, absl::StrCat("record '", full, "' lies outside the file"));
  }
  char h[kLocalHeaderSize];
  TANDEM_RETURN_IF_ERROR(PreadAll(fd_.get(), path_, h, sizeof(h), e.offset));
  if (Get32(h) != kLocalHeaderSig) {
    return Corrupt(path_, absl::StrCat("record '", full, "' has a corrupt local header"));
  }
  const uint64_t data_offset = e.offset + kLocalHeaderSize + Get16(h + 26) + Get16(h + 28);
  if (data_offset > directory_offset_ || directory_offset_ - data_offset < e.size) {
    return Corrupt(path_, absl::StrCat("record '", full, "' runs past its end (truncated?)"));
  }
  std::string data(e.size, '\0');
  TANDEM_RETURN_IF_ERROR(PreadAll(fd_.get(), path_, data.data(), data.size(), data_offset));
  const uint32_t crc = Crc32(data.data(), data.size());
  if (crc != e.crc) {
    return Corrupt(path_, absl::StrFormat("record '%s' fails its CRC-32 check (stored %08x, "
                                          "computed %08x): the file is corrupt",
                                          full, e.crc, crc));
  }
  return data;
}

// ---------------------------------------------------------------------------
// Pickle: what torch.save writes for a dict of tensors.

namespace op {
constexpr char kMark = '(';
constexpr char kStop = '.';
constexpr char kPop = '0';
constexpr char kPopMark = '1';
constexpr char kDup = '2';
constexpr char kBinFloat = 'G';
constexpr char kBinInt = 'J';
constexpr char kBinInt1 = 'K';
constexpr char kBinInt2 = 'M';
constexpr char kNone = 'N';
constexpr char kBinPersId = 'Q';
constexpr char kReduce = 'R';
constexpr char kBinUnicode = 'X';
constexpr char kAppend = 'a';
constexpr char kBuild = 'b';
constexpr char kGlobal = 'c';
constexpr char kDict = 'd';
constexpr char kEmptyDict = '}';
constexpr char kAppends = 'e';
constexpr char kBinGet = 'h';
constexpr char kLongBinGet = 'j';
constexpr char kList = 'l';
constexpr char kEmptyList = ']';
constexpr char kBinPut = 'q';
constexpr char kLongBinPut = 'r';
constexpr char kSetItem = 's';
constexpr char kTuple = 't';
constexpr char kEmptyTuple = ')';
constexpr char kSetItems = 'u';
constexpr char kProto = '\x80';
constexpr char kTuple1 = '\x85';
constexpr char kTuple2 = '\x86';
constexpr char kTuple3 = '\x87';
constexpr char kNewTrue = '\x88';
constexpr char kNewFalse = '\x89';
constexpr char kLong1 = '\x8a';
constexpr char kLong4 = '\x8b';
constexpr char kShortBinUnicode = '\x8c';
constexpr char kBinUnicode8 = '\x8d';
constexpr char kStackGlobal = '\x93';
constexpr char kMemoize = '\x94';
constexpr char kFrame = '\x95';
}  // namespace op

// Names of every pickle opcode (protocols 0 to 5), for error messages.
const char* OpcodeName(unsigned char c) {
  switch (c) {
    case '(':
      return "MARK";
    case '.':
      return "STOP";
    case '0':
      return "POP";
    case '1':
      return "POP_MARK";
    case '2':
      return "DUP";
    case 'F':
      return "FLOAT";
    case 'I':
      return "INT";
    case 'J':
      return "BININT";
    case 'K':
      return "BININT1";
    case 'L':
      return "LONG";
    case 'M':
      return "BININT2";
    case 'N':
      return "NONE";
    case 'P':
      return "PERSID";
    case 'Q':
      return "BINPERSID";
    case 'R':
      return "REDUCE";
    case 'S':
      return "STRING";
    case 'T':
      return "BINSTRING";
    case 'U':
      return "SHORT_BINSTRING";
    case 'V':
      return "UNICODE";
    case 'X':
      return "BINUNICODE";
    case 'a':
      return "APPEND";
    case 'b':
      return "BUILD";
    case 'c':
      return "GLOBAL";
    case 'd':
      return "DICT";
    case '}':
      return "EMPTY_DICT";
    case 'e':
      return "APPENDS";
    case 'g':
      return "GET";
    case 'h':
      return "BINGET";
    case 'i':
      return "INST";
    case 'j':
      return "LONG_BINGET";
    case 'l':
      return "LIST";
    case ']':
      return "EMPTY_LIST";
    case 'o':
      return "OBJ";
    case 'p':
      return "PUT";
    case 'q':
      return "BINPUT";
    case 'r':
      return "LONG_BINPUT";
    case 's':
      return "SETITEM";
    case 't':
      return "TUPLE";
    case ')':
      return "EMPTY_TUPLE";
    case 'u':
      return "SETITEMS";
    case 'G':
      return "BINFLOAT";
    case 0x80:
      return "PROTO";
    case 0x81:
      return "NEWOBJ";
    case 0x82:
      return "EXT1";
    case 0x83:
      return "EXT2";
    case 0x84:
      return "EXT4";
    case 0x85:
      return "TUPLE1";
    case 0x86:
      return "TUPLE2";
    case 0x87:
      return "TUPLE3";
    case 0x88:
      return "NEWTRUE";
    case 0x89:
      return "NEWFALSE";
    case 0x8a:
      return "LONG1";
    case 0x8b:
      return "LONG4";
    case 'B':
      return "BINBYTES";
    case 'C':
      return "SHORT_BINBYTES";
    case 0x8c:
      return "SHORT_BINUNICODE";
    case 0x8d:
      return "BINUNICODE8";
    case 0x8e:
      return "BINBYTES8";
    case 0x8f:
      return "EMPTY_SET";
    case 0x90:
      return "ADDITEMS";
    case 0x91:
      return "FROZENSET";
    case 0x92:
      return "NEWOBJ_EX";
    case 0x93:
      return "STACK_GLOBAL";
    case 0x94:
      return "MEMOIZE";
    case 0x95:
      return "FRAME";
    case 0x96:
      return "BYTEARRAY8";
    case 0x97:
      return "NEXT_BUFFER";
    case 0x98:
      return "READONLY_BUFFER";
    default:
      return "not a pickle opcode";
  }
}

class PickleWriter {
 public:
  PickleWriter() {
    out_ += op::kProto;
    out_ += '\2';  // torch.save's default protocol
  }

  void Op(char c) { out_ += c; }
  void Global(std::string_view module, std::string_view name) {
    out_ += op::kGlobal;
    out_.append(module).append(1, '\n').append(name).append(1, '\n');
  }
  void String(std::string_view s) {
    out_ += op::kBinUnicode;
    Put32(&out_, static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void Int(int64_t v) {
    if (v >= 0 && v < 0x100) {
      out_ += op::kBinInt1;
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v < 0x10000) {
      out_ += op::kBinInt2;
      Put16(&out_, static_cast<uint16_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      out_ += op::kBinInt;
      Put32(&out_, static_cast<uint32_t>(v));
    } else {
      out_ += op::kLong1;
      out_ += '\x08';
      Put64(&out_, static_cast<uint64_t>(v));
    }
  }
  void IntTuple(const std::vector<int64_t>& values) {
    if (values.empty()) {
      Op(op::kEmptyTuple);
      return;
    }
    Op(op::kMark);
    for (int64_t v : values) Int(v);
    Op(op::kTuple);
  }
  std::string Finish() {
    out_ += op::kStop;
    return std::move(out_);
  }

 private:
  std::string out_;
};

// `collections.OrderedDict(name -> torch._utils._rebuild_tensor_v2(storage,
// 0, shape, strides, False, OrderedDict()))`, each tensor's storage saved as
// record data/<index>.
std::string PickleStateDict(const std::vector<TensorView>& tensors) {
  PickleWriter w;
  w.Global("collections", "OrderedDict");
  w.Op(op::kEmptyTuple);
  w.Op(op::kReduce);
  if (!tensors.empty()) {
    w.Op(op::kMark);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorView& t = tensors[i];
      const DTypeInfo* info = FindDType(t.dtype);
      w.String(t.name);
      w.Global("torch._utils", "_rebuild_tensor_v2");
      w.Op(op::kMark);
      w.Op(op::kMark);
      w.String("storage");
      w.Global("torch", info->storage);
      w.String(std::to_string(i));
      w.String("cpu");
      w.Int(static_cast<int64_t>(t.bytes / info->itemsize));
      w.Op(op::kTuple);
      w.Op(op::kBinPersId);
      w.Int(0);
      w.IntTuple(t.shape);
      w.IntTuple(ContiguousStrides(t.shape));
      w.Op(op::kNewFalse);
      w.Global("collections", "OrderedDict");
      w.Op(op::kEmptyTuple);
      w.Op(op::kReduce);
      w.Op(op::kTuple);
      w.Op(op::kReduce);
    }
    w.Op(op::kSetItems);
  }
  return w.Finish();
}

struct Obj;
using ObjPtr = std::shared_ptr<Obj>;

struct StorageRef {
  std::string type;        // storage class in module torch, e.g. "FloatStorage"
  const DTypeInfo* dtype;  // null if tandem has no such dtype
  std::string key;         // record data/<key>
  int64_t numel = 0;
};

struct TensorRef {
  StorageRef storage;
  int64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

// A Python object as far as a state_dict needs one.
struct Obj {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kStorage,
    kTensor
  };
  explicit Obj(Kind k) : kind(k) {}

  Kind kind;
  int64_t i = 0;                                     // kBool, kInt
  std::string s;                                     // kStr; kGlobal as "module.name"
  std::vector<ObjPtr> items;                         // kTuple, kList
  std::vector<std::pair<ObjPtr, ObjPtr>> entries;    // kDict, in insertion order
  std::unordered_map<std::string, size_t> str_keys;  // kDict: str key -> entry
  StorageRef storage;                                // kStorage
  TensorRef tensor;                                  // kTensor

  void SetItem(ObjPtr key, ObjPtr value) {
    if (key->kind == Kind::kStr) {
      auto [it, inserted] = str_keys.emplace(key->s, entries.size());
      if (!inserted) {
        entries[it->second].second = std::move(value);
        return;
      }
    }
    entries.emplace_back(std::move(key), std::move(value));
  }
};

const char* KindName(Obj::Kind kind) {
  switch (kind) {
    case Obj::Kind::kNone:
      return "None";
    case Obj::Kind::kBool:
      return "a bool";
    case Obj::Kind::kInt:
      return "an int";
    case Obj::Kind::kFloat:
      return "a float";
    case Obj::Kind::kStr:
      return "a str";
    case Obj::Kind::kTuple:
      return "a tuple";
    case Obj::Kind::kList:
      return "a list";
    case Obj::Kind::kDict:
      return "a dict";
    case Obj::Kind::kGlobal:
      return "a class or function";
    case Obj::Kind::kStorage:
      return "a storage";
    case Obj::Kind::kTensor:
      return "a tensor";
  }
  return "an object";
}

// A stack machine for the opcodes torch.save emits for a dict of tensors
// (protocol 2, which torch uses, and 3 and 4, which callers may ask for).
class Unpickler {
 public:
  Unpickler(std::string_view data, const std::string& path) : data_(data), path_(path) {}

  absl::StatusOr<ObjPtr> Run();

 private:
  absl::Status Error(absl::string_view what) const {
    return Invalid(path_, absl::StrCat("data.pkl at byte ", op_pos_, ": ", what));
  }
  bool Take(size_t n, const char** p) {
    if (data_.size() - pos_ < n) return false;
    *p = data_.data() + pos_;
    pos_ += n;
    return true;
  }
  absl::Status Truncated() const { return Error("pickle ends inside an opcode"); }
  absl::StatusOr<std::string> Line();
  absl::StatusOr<ObjPtr> Pop();
  absl::StatusOr<std::vector<ObjPtr>> PopMark();
  void Push(ObjPtr o) { stack_.push_back(std::move(o)); }
  void PushInt(int64_t v) {
    auto o = std::make_shared<Obj>(Obj::Kind::kInt);
    o->i = v;
    Push(std::move(o));
  }
  absl::Status PushString(size_t len);
  absl::Status PushLong(size_t len);
  absl::Status Put(uint64_t index);
  absl::Status Get(uint64_t index);
  absl::StatusOr<ObjPtr> Persistent(const ObjPtr& pid);
  absl::StatusOr<ObjPtr> Call(const ObjPtr& callable, const ObjPtr& args);
  absl::StatusOr<ObjPtr> Tensor(const std::vector<ObjPtr>& args);
  absl::StatusOr<std::vector<int64_t>> Ints(const ObjPtr& o, const char* what) const;

  std::string_view data_;
  const std::string& path_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<ObjPtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ObjPtr> memo_;
};

absl::StatusOr<std::string> Unpickler::Line() {
  const size_t nl = data_.find('\n', pos_);
  if (nl == std::string_view::npos) return Truncated();
  std::string line(data_.substr(pos_, nl - pos_));
  pos_ = nl + 1;
  return line;
}

absl::StatusOr<ObjPtr> Unpickler::Pop() {
  if (stack_.empty() || (!marks_.empty() && marks_.back() == stack_.size())) {
    return Error(
        absl::StrCat(OpcodeName(static_cast<unsigned char>(data_[op_pos_])), " on an empty stack"));
  }
  ObjPtr o = std::move(stack_.back());
  stack_.pop_back();
  return o;
}

absl::StatusOr<std::vector<ObjPtr>> Unpickler::PopMark() {
  if (marks_.empty()) {
    return Error(
        absl::StrCat(OpcodeName(static_cast<unsigned char>(data_[op_pos_])), " without a MARK"));
  }
  const size_t mark = marks_.back();
  marks_.pop_back();
  std::vector<ObjPtr> items(std::make_move_iterator(stack_.begin() + mark),
                            std::make_move_iterator(stack_.end()));
  stack_.resize(mark);
  return items;
}

absl::Status Unpickler::PushString(size_t len) {
  const char* p;
  if (!Take(len, &p)) return Truncated();
  auto o = std::make_shared<Obj>(Obj::Kind::kStr);
  o->s.assign(p, len);
  Push(std::move(o));
  return absl::OkStatus();
}

absl::Status Unpickler::PushLong(size_t len) {
  const char* p;
  if (!Take(len, &p)) return Truncated();
  if (len > 8) return Error(absl::StrCat("integer of ", len, " bytes does not fit in 64 bits"));
  uint64_t v = 0;
  for (size_t k = 0; k < len; ++k)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(p[k])) << (8 * k);
  if (len > 0 && len < 8 && (p[len - 1] & 0x80)) v |= ~uint64_t{0} << (8 * len);  // sign-extend
  PushInt(static_cast<int64_t>(v));
  return absl::OkStatus();
}

absl::Status Unpickler::Put(uint64_t index) {
  if (stack_.empty()) return Error("memo store on an empty stack");
  memo_[index] = stack_.back();
  return absl::OkStatus();
}

absl::Status Unpickler::Get(uint64_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) return Error(absl::StrCat("memo entry ", index, " is not set"));
  Push(it->second);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int64_t>> Unpickler::Ints(const ObjPtr& o, const char* what) const {
  if (o->kind != Obj::Kind::kTuple && o->kind != Obj::Kind::kList) {
    return Error(absl::StrCat("tensor ", what, " is ", KindName(o->kind), ", not a tuple"));
  }
  std::vector<int64_t> out;
  for (const ObjPtr& item : o->items) {
    if (item->kind != Obj::Kind::kInt) {
      return Error(absl::StrCat("tensor ", what, " holds ", KindName(item->kind)));
    }
    out.push_back(item->i);
  }
  return out;
}

absl::StatusOr<ObjPtr> Unpickler::Persistent(const ObjPtr& pid) {
  // ('storage', torch.FloatStorage, key, location, numel)
  const std::vector<ObjPtr>& f = pid->items;
  if (pid->kind != Obj::Kind::kTuple || f.size() != 5 || f[0]->kind != Obj::Kind::kStr ||
      f[0]->s != "storage" || f[1]->kind != Obj::Kind::kGlobal || f[2]->kind != Obj::Kind::kStr ||
      f[4]->kind != Obj::Kind::kInt) {
    return Error("persistent id is not ('storage', type, key, location, numel)");
  }
  const std::string& type = f[1]->s;
  if (type.rfind("torch.", 0) != 0 || type.find('.', 6) != std::string::npos) {
    return Error(absl::StrCat("unknown storage type ", type));
  }
  auto o = std::make_shared<Obj>(Obj::Kind::kStorage);
  o->storage.type = type.substr(6);
  o->storage.dtype = FindStorage(o->storage.type);
  if (o->storage.dtype == nullptr && UnsupportedStorageDType(o->storage.type) == nullptr) {
    return Error(absl::StrCat("unknown storage type ", type));
  }
  o->storage.key = f[2]->s;
  o->storage.numel = f[4]->i;
  if (o->storage.numel < 0) return Error("storage with a negative size");
  return o;
}

absl::StatusOr<ObjPtr> Unpickler::Tensor(const std::vector<ObjPtr>& args) {
  // (storage, storage_offset, size, stride, ...)
  if (args.size() < 4 || args[0]->kind != Obj::Kind::kStorage || args[1]->kind != Obj::Kind::kInt) {
    return Error("tensor arguments are not (storage, offset, size, stride, ...)");
  }
  auto o = std::make_shared<Obj>(Obj::Kind::kTensor);
  o->tensor.storage = args[0]->storage;
  o->tensor.offset = args[1]->i;
  auto size = Ints(args[2], "size");
  if (!size.ok()) return size.status();
  auto stride = Ints(args[3], "stride");
  if (!stride.ok()) return stride.status();
  o->tensor.size = *std::move(size);
  o->tensor.stride = *std::move(stride);
  return o;
}

absl::StatusOr<ObjPtr> Unpickler::Call(const ObjPtr& callable, const ObjPtr& args) {
  if (callable->kind != Obj::Kind::kGlobal) {
    return Error(absl::StrCat("REDUCE calls ", KindName(callable->kind)));
  }
  if (args->kind != Obj::Kind::kTuple) {
    return Error(absl::StrCat("REDUCE with arguments that are ", KindName(args->kind)));
  }
  const std::string& f = callable->s;
  const std::vector<ObjPtr>& a = args->items;
  if (f == "collections.OrderedDict" || f == "builtins.dict") {
    if (!a.empty()) return Error(absl::StrCat(f, " called with arguments"));
    return std::make_shared<Obj>(Obj::Kind::kDict);
  }
  if (f == "torch._utils._rebuild_tensor_v2" || f == "torch._utils._rebuild_tensor") {
    return Tensor(a);
  }
  if (f == "torch._utils._rebuild_parameter" || f == "torch._utils._rebuild_parameter_with_state") {
    if (a.empty() || a[0]->kind != Obj::Kind::kTensor)
      return Error(absl::StrCat(f, " of a non-tensor"));
    return a[0];
  }
  return Error(
      absl::StrCat("unsupported callable ", f, " (ReadStateDict reads dense tensors in a dict)"));
}

absl::StatusOr<ObjPtr> Unpickler::Run() {
  while (true) {
    op_pos_ = pos_;
    const char* p;
    if (!Take(1, &p)) return Error("pickle ends without STOP");
    const char c = *p;
    switch (c) {
      case op::kProto: {
        if (!Take(1, &p)) return Truncated();
        if (static_cast<unsigned char>(*p) > 5) {
          return Error(absl::StrCat("pickle protocol ", static_cast<int>(*p), " is unknown"));
        }
        break;
      }
      case op::kFrame:
        if (!Take(8, &p)) return Truncated();
        break;
      case op::kGlobal: {
        auto module = Line();
        if (!module.ok()) return module.status();
        auto name = Line();
        if (!name.ok()) return name.status();
        auto o = std::make_shared<Obj>(Obj::Kind::kGlobal);
        o->s = absl::StrCat(*module, ".", *name);
        Push(std::move(o));
        break;
      }
      case op::kStackGlobal: {
        auto name = Pop();
        if (!name.ok()) return name.status();
        auto module = Pop();
        if (!module.ok()) return module.status();
        if ((*name)->kind != Obj::Kind::kStr || (*module)->kind != Obj::Kind::kStr) {
          return Error("STACK_GLOBAL of non-strings");
        }
        auto o = std::make_shared<Obj>(Obj::Kind::kGlobal);
        o->s = absl::StrCat((*module)->s, ".", (*name)->s);
        Push(std::move(o));
        break;
      }
      case op::kBinPersId: {
        auto pid = Pop();
        if (!pid.ok()) return pid.status();
        auto storage = Persistent(*pid);
        if (!storage.ok()) return storage.status();
        Push(*std::move(storage));
        break;
      }
      case op::kBinUnicode:
        if (!Take(4, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(PushString(Get32(p)));
        break;
      case op::kShortBinUnicode:
        if (!Take(1, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(PushString(static_cast<unsigned char>(*p)));
        break;
      case op::kBinUnicode8: {
        if (!Take(8, &p)) return Truncated();
        const uint64_t len = Get64(p);
        if (len > data_.size()) return Truncated();
        TANDEM_RETURN_IF_ERROR(PushString(static_cast<size_t>(len)));
        break;
      }
      case op::kBinInt:
        if (!Take(4, &p)) return Truncated();
        PushInt(static_cast<int32_t>(Get32(p)));
        break;
      case op::kBinInt1:
        if (!Take(1, &p)) return Truncated();
        PushInt(static_cast<unsigned char>(*p));
        break;
      case op::kBinInt2:
        if (!Take(2, &p)) return Truncated();
        PushInt(Get16(p));
        break;
      case op::kLong1:
        if (!Take(1, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(PushLong(static_cast<unsigned char>(*p)));
        break;
      case op::kLong4: {
        if (!Take(4, &p)) return Truncated();
        const auto len = static_cast<int32_t>(Get32(p));
        if (len < 0) return Error("LONG4 with a negative length");
        TANDEM_RETURN_IF_ERROR(PushLong(static_cast<size_t>(len)));
        break;
      }
      case op::kBinFloat:
        // A float's value never matters for a state_dict (it is never a tensor).
        if (!Take(8, &p)) return Truncated();
        Push(std::make_shared<Obj>(Obj::Kind::kFloat));
        break;
      case op::kNewTrue:
      case op::kNewFalse: {
        auto o = std::make_shared<Obj>(Obj::Kind::kBool);
        o->i = c == op::kNewTrue;
        Push(std::move(o));
        break;
      }
      case op::kNone:
        Push(std::make_shared<Obj>(Obj::Kind::kNone));
        break;
      case op::kMark:
        marks_.push_back(stack_.size());
        break;
      case op::kPopMark: {
        auto items = PopMark();
        if (!items.ok()) return items.status();
        break;
      }
      case op::kPop: {
        auto o = Pop();
        if (!o.ok()) return o.status();
        break;
      }
      case op::kDup:
        if (stack_.empty()) return Error("DUP on an empty stack");
        Push(stack_.back());
        break;
      case op::kEmptyTuple:
      case op::kTuple1:
      case op::kTuple2:
      case op::kTuple3:
      case op::kTuple:
      case op::kList: {
        auto o = std::make_shared<Obj>(c == op::kList ? Obj::Kind::kList : Obj::Kind::kTuple);
        if (c == op::kTuple || c == op::kList) {
          auto items = PopMark();
          if (!items.ok()) return items.status();
          o->items = *std::move(items);
        } else {
          const size_t n = c == op::kEmptyTuple ? 0 : static_cast<unsigned char>(c) - 0x84;
          o->items.resize(n);
          for (size_t k = n; k-- > 0;) {
            auto item = Pop();
            if (!item.ok()) return item.status();
            o->items[k] = *std::move(item);
          }
        }
        Push(std::move(o));
        break;
      }
      case op::kEmptyList:
        Push(std::make_shared<Obj>(Obj::Kind::kList));
        break;
      case op::kEmptyDict:
        Push(std::make_shared<Obj>(Obj::Kind::kDict));
        break;
      case op::kDict: {
        auto items = PopMark();
        if (!items.ok()) return items.status();
        if (items->size() % 2 != 0) return Error("DICT with an odd number of items");
        auto o = std::make_shared<Obj>(Obj::Kind::kDict);
        for (size_t k = 0; k < items->size(); k += 2) o->SetItem((*items)[k], (*items)[k + 1]);
        Push(std::move(o));
        break;
      }
      case op::kAppend:
      case op::kAppends: {
        std::vector<ObjPtr> items;
        if (c == op::kAppends) {
          auto popped = PopMark();
          if (!popped.ok()) return popped.status();
          items = *std::move(popped);
        } else {
          auto item = Pop();
          if (!item.ok()) return item.status();
          items.push_back(*std::move(item));
        }
        if (stack_.empty() || stack_.back()->kind != Obj::Kind::kList) {
          return Error(absl::StrCat(OpcodeName(static_cast<unsigned char>(c)), " to a non-list"));
        }
        for (ObjPtr& item : items) stack_.back()->items.push_back(std::move(item));
        break;
      }
      case op::kSetItem:
      case op::kSetItems: {
        std::vector<ObjPtr> items;
        if (c == op::kSetItems) {
          auto popped = PopMark();
          if (!popped.ok()) return popped.status();
          items = *std::move(popped);
          if (items.size() % 2 != 0) return Error("SETITEMS with an odd number of items");
        } else {
          auto value = Pop();
          if (!value.ok()) return value.status();
          auto key = Pop();
          if (!key.ok()) return key.status();
          items = {*std::move(key), *std::move(value)};
        }
        if (stack_.empty() || stack_.back()->kind != Obj::Kind::kDict) {
          return Error(absl::StrCat(OpcodeName(static_cast<unsigned char>(c)), " on a non-dict"));
        }
        for (size_t k = 0; k < items.size(); k += 2) {
          stack_.back()->SetItem(std::move(items[k]), std::move(items[k + 1]));
        }
        break;
      }
      case op::kReduce: {
        auto args = Pop();
        if (!args.ok()) return args.status();
        auto callable = Pop();
        if (!callable.ok()) return callable.status();
        auto result = Call(*callable, *args);
        if (!result.ok()) return result.status();
        Push(*std::move(result));
        break;
      }
      case op::kBuild: {
        // Sets attributes: an OrderedDict's _metadata, a Parameter's state.
        auto state = Pop();
        if (!state.ok()) return state.status();
        if (stack_.empty() || (stack_.back()->kind != Obj::Kind::kDict &&
                               stack_.back()->kind != Obj::Kind::kTensor)) {
          return Error("BUILD of an object other than a dict or tensor");
        }
        break;
      }
      case op::kBinPut:
        if (!Take(1, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(Put(static_cast<unsigned char>(*p)));
        break;
      case op::kLongBinPut:
        if (!Take(4, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(Put(Get32(p)));
        break;
      case op::kMemoize:
        TANDEM_RETURN_IF_ERROR(Put(memo_.size()));
        break;
      case op::kBinGet:
        if (!Take(1, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(Get(static_cast<unsigned char>(*p)));
        break;
      case op::kLongBinGet:
        if (!Take(4, &p)) return Truncated();
        TANDEM_RETURN_IF_ERROR(Get(Get32(p)));
        break;
      case op::kStop: {
        auto result = Pop();
        if (!result.ok()) return result.status();
        return *std::move(result);
      }
      default:
        return Error(absl::StrFormat("unsupported pickle opcode 0x%02x (%s)",
                                     static_cast<unsigned char>(c),
                                     OpcodeName(static_cast<unsigned char>(c))));
    }
  }
}

// Copies the elements `t` addresses in `storage` into row-major order.
absl::Status Gather(const std::string& path, const std::string& name, const TensorRef& t,
                    const std::string& storage, std::string* out) {
  const size_t item = t.storage.dtype->itemsize;
  auto invalid = [&](absl::string_view what) {
    return Invalid(path, absl::StrCat("tensor '", name, "': ", what));
  };
  if (t.size.size() != t.stride.size()) return invalid("size and stride differ in length");
  uint64_t numel;
  if (!CountElements(t.size, item, &numel)) return invalid("invalid size");
  if (t.offset < 0) return invalid("negative storage offset");
  out->clear();
  if (numel == 0) return absl::OkStatus();
  uint64_t last = static_cast<uint64_t>(t.offset);
  for (size_t d = 0; d < t.size.size(); ++d) {
    uint64_t reach;
    if (t.stride[d] < 0) return invalid("negative stride");
    if (__builtin_mul_overflow(static_cast<uint64_t>(t.size[d] - 1),
                               static_cast<uint64_t>(t.stride[d]), &reach) ||
        __builtin_add_overflow(last, reach, &last)) {
      return invalid("strides overflow");
    }
  }
  if (last >= static_cast<uint64_t>(t.storage.numel)) {
    return invalid(absl::StrCat("reaches element ", last, " of a storage of ", t.storage.numel));
  }
  out->resize(numel * item);
  const char* base = storage.data() + static_cast<uint64_t>(t.offset) * item;

  bool contiguous = true;
  const std::vector<int64_t> expected = ContiguousStrides(t.size);
  for (size_t d = 0; d < t.size.size(); ++d) {
    contiguous &= t.size[d] == 1 || t.stride[d] == expected[d];
  }
  if (contiguous) {
    std::memcpy(out->data(), base, out->size());
    return absl::OkStatus();
  }
  // Walk the index space with an odometer over all dimensions but the last.
  const size_t dims = t.size.size();
  const uint64_t row = static_cast<uint64_t>(t.size[dims - 1]);
  const uint64_t row_stride = static_cast<uint64_t>(t.stride[dims - 1]) * item;
  std::vector<int64_t> index(dims, 0);
  char* dst = out->data();
  for (uint64_t done = 0; done < numel; done += row) {
    uint64_t src = 0;
    for (size_t d = 0; d + 1 < dims; ++d) {
      src += static_cast<uint64_t>(index[d]) * static_cast<uint64_t>(t.stride[d]);
    }
    const char* s = base + src * item;
    for (uint64_t k = 0; k < row; ++k, s += row_stride, dst += item) std::memcpy(dst, s, item);
    for (size_t d = dims - 1; d-- > 0;) {
      if (++index[d] < t.size[d]) break;
      index[d] = 0;
    }
  }
  return absl::OkStatus();
}

std::atomic<uint64_t> temp_counter{0};

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

namespace internal {

absl::Status WriteStateDict(const std::string& path, const std::vector<TensorView>& tensors,
                            uint64_t zip64_threshold) {
  std::unordered_set<std::string_view> names;
  for (const TensorView& t : tensors) {
    auto invalid = [&](absl::string_view what) {
      return Invalid(path, absl::StrCat("tensor '", t.name, "': ", what));
    };
    if (t.name.empty()) return Invalid(path, "a tensor has no name");
    if (!IsValidUtf8(t.name)) return invalid("name is not valid UTF-8");
    if (!names.insert(t.name).second) return invalid("duplicate name");
    const DTypeInfo* info = FindDType(t.dtype);
    if (info == nullptr) {
      return invalid(absl::StrCat("dtype ", v1::DType_Name(t.dtype), " cannot be saved"));
    }
    uint64_t numel;
    if (!CountElements(t.shape, info->itemsize, &numel)) {
      return invalid("shape has a negative or too large dimension");
    }
    if (t.bytes != numel * info->itemsize) {
      return invalid(absl::StrCat("has ", t.bytes, " bytes; its shape and dtype need ",
                                  numel * info->itemsize));
    }
    if (t.bytes > 0 && t.data == nullptr) return invalid("has bytes but no data");
  }

  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid(), "-", temp_counter++);
  ScopedFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  if (fd.get() < 0) return Errno(errno, path, absl::StrCat("creating ", tmp));

  auto write = [&]() -> absl::Status {
    FileSink sink(fd.get(), tmp);
    ZipWriter zip(&sink, zip64_threshold);
    const std::string folder = "archive/";
    const std::string pickle = PickleStateDict(tensors);
    TANDEM_RETURN_IF_ERROR(zip.Add(folder + "data.pkl", pickle.data(), pickle.size()));
    // torch >= 2.1 reads this to byte-swap on big-endian hosts; 1.13 ignores it.
    TANDEM_RETURN_IF_ERROR(zip.Add(folder + "byteorder", "little", 6));
    for (size_t i = 0; i < tensors.size(); ++i) {
      TANDEM_RETURN_IF_ERROR(
          zip.Add(absl::StrCat(folder, "data/", i), tensors[i].data, tensors[i].bytes));
    }
    // The archive format version torch 1.13 writes for torch.save.
    TANDEM_RETURN_IF_ERROR(zip.Add(folder + "version", "3\n", 2));
    TANDEM_RETURN_IF_ERROR(zip.Finish());
    TANDEM_RETURN_IF_ERROR(sink.Flush());
    if (::fsync(fd.get()) != 0) return Errno(errno, path, absl::StrCat("syncing ", tmp));
    if (fd.Close() != 0) return Errno(errno, path, absl::StrCat("closing ", tmp));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return Errno(errno, path, absl::StrCat("renaming ", tmp, " over it"));
    }
    return absl::OkStatus();
  };
  absl::Status status = write();
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  // The rename is durable once the directory is synced.
  const std::string dir = DirName(path);
  ScopedFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0 || ::fsync(dir_fd.get()) != 0) {
    return Errno(errno, path, absl::StrCat("syncing directory ", dir));
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status WriteStateDict(const std::string& path, const std::vector<TensorView>& tensors) {
  return internal::WriteStateDict(path, tensors, kMax32);
}

absl::StatusOr<std::vector<StoredTensor>> ReadStateDict(const std::string& path) {
  auto zip = ZipReader::Open(path);
  if (!zip.ok()) return zip.status();
  // A TorchScript archive has a data.pkl too (the module), next to its constants.
  if (zip->Has("constants.pkl")) {
    return Invalid(path,
                   "a TorchScript archive (torch.jit.save), not a state_dict; load it with "
                   "torch.jit.load");
  }
  if (!zip->Has("data.pkl")) {
    return Invalid(path, absl::StrCat("zip archive without ", zip->folder(),
                                      "data.pkl: not a torch.save file"));
  }
  if (zip->Has("byteorder")) {
    auto order = zip->Read("byteorder");
    if (!order.ok()) return order.status();
    if (*order != "little") {
      return Invalid(path, absl::StrCat("byte order '", *order, "' is not supported"));
    }
  }
  auto pickle = zip->Read("data.pkl");
  if (!pickle.ok()) return pickle.status();
  auto root = Unpickler(*pickle, path).Run();
  if (!root.ok()) return root.status();
  if ((*root)->kind != Obj::Kind::kDict) {
    return Invalid(path, absl::StrCat("holds ", KindName((*root)->kind),
                                      ", not a dict of tensors (a state_dict)"));
  }

  // Check everything before reading any tensor data.
  const auto& entries = (*root)->entries;
  std::unordered_map<std::string, size_t> uses;  // storage key -> tensors left to read
  for (const auto& [key, value] : entries) {
    if (key->kind != Obj::Kind::kStr) {
      return Invalid(path, absl::StrCat("has a key that is ", KindName(key->kind),
                                        ", not a str: not a state_dict"));
    }
    if (value->kind != Obj::Kind::kTensor) {
      return Invalid(path, absl::StrCat("value of '", key->s, "' is ", KindName(value->kind),
                                        ", not a tensor: ReadStateDict reads a flat dict of "
                                        "tensors (a model's state_dict)"));
    }
    const StorageRef& s = value->tensor.storage;
    if (s.dtype == nullptr) {
      return Invalid(
          path, absl::StrCat("tensor '", key->s, "' has dtype ", UnsupportedStorageDType(s.type),
                             " (torch.", s.type, "), which tandem does not support (it supports ",
                             kSupportedDTypes, ")"));
    }
    ++uses[s.key];
  }

  std::vector<StoredTensor> out;
  out.reserve(entries.size());
  std::unordered_map<std::string, std::string> storages;  // dropped after their last use
  for (const auto& [key, value] : entries) {
    const TensorRef& t = value->tensor;
    auto it = storages.find(t.storage.key);
    if (it == storages.end()) {
      auto data = zip->Read("data/" + t.storage.key);
      if (!data.ok()) return data.status();
      it = storages.emplace(t.storage.key, *std::move(data)).first;
    }
    const uint64_t want = static_cast<uint64_t>(t.storage.numel) * t.storage.dtype->itemsize;
    if (it->second.size() != want) {
      return Corrupt(path, absl::StrCat("record '", zip->folder(), "data/", t.storage.key,
                                        "' holds ", it->second.size(), " bytes but tensor '",
                                        key->s, "' declares a storage of ", t.storage.numel, " ",
                                        t.storage.dtype->name, " (", want, " bytes)"));
    }
    StoredTensor st;
    st.name = key->s;
    st.dtype = t.storage.dtype->dtype;
    st.shape = t.size;
    TANDEM_RETURN_IF_ERROR(Gather(path, st.name, t, it->second, &st.bytes));
    out.push_back(std::move(st));
    if (--uses[t.storage.key] == 0) storages.erase(it);
  }
  return out;
}

}  // namespace tandem
