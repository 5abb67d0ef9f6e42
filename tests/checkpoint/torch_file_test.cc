#include "checkpoint/torch_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/digest.h"
#include "tests/support/byte_tensors.h"

namespace tandem {
namespace {

using testing::Pattern;

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kPython[] = "/usr/bin/python3";

struct Owned {
  std::string name;
  v1::DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

size_t ItemSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT64:
    case v1::DTYPE_INT64:
      return 8;
    case v1::DTYPE_UINT8:
      return 1;
    case v1::DTYPE_FLOAT16:
    case v1::DTYPE_BFLOAT16:
      return 2;
    default:
      return 4;
  }
}

const char* DTypeName(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FLOAT32:
      return "float32";
    case v1::DTYPE_FLOAT64:
      return "float64";
    case v1::DTYPE_INT64:
      return "int64";
    case v1::DTYPE_UINT8:
      return "uint8";
    case v1::DTYPE_FLOAT16:
      return "float16";
    case v1::DTYPE_BFLOAT16:
      return "bfloat16";
    default:
      return "?";
  }
}

Owned Make(std::string name, v1::DType dtype, std::vector<int64_t> shape, uint32_t seed) {
  size_t numel = 1;
  for (int64_t d : shape) numel *= static_cast<size_t>(d);
  std::string bytes = Pattern(numel * ItemSize(dtype), seed);
  if (dtype == v1::DTYPE_FLOAT32 || dtype == v1::DTYPE_FLOAT64 || dtype == v1::DTYPE_FLOAT16 ||
      dtype == v1::DTYPE_BFLOAT16) {
    // Clear each element's top exponent bit so no pattern is a NaN, whose
    // payload Python's checks might not keep.
    const size_t item = ItemSize(dtype);
    for (size_t i = item - 1; i < bytes.size(); i += item) bytes[i] &= 0x3F;
  }
  return Owned{std::move(name), dtype, std::move(shape), std::move(bytes)};
}

std::vector<TensorView> Views(const std::vector<Owned>& tensors) {
  std::vector<TensorView> views;
  for (const Owned& t : tensors) {
    TensorView v;
    v.name = t.name;
    v.dtype = t.dtype;
    v.shape = t.shape;
    v.data = t.bytes.data();
    v.bytes = t.bytes.size();
    views.push_back(v);
  }
  return views;
}

// One line per tensor, as the Python helper below prints it.
std::string Describe(const std::string& name, v1::DType dtype, const std::vector<int64_t>& shape,
                     const std::string& bytes) {
  return absl::StrCat(name, "|", DTypeName(dtype), "|", absl::StrJoin(shape, ","), "|",
                      ToHex(Sha256Of(bytes.data(), bytes.size())));
}

std::vector<std::string> Describe(const std::vector<Owned>& tensors) {
  std::vector<std::string> lines;
  for (const Owned& t : tensors) lines.push_back(Describe(t.name, t.dtype, t.shape, t.bytes));
  return lines;
}

std::vector<std::string> Describe(const std::vector<StoredTensor>& tensors) {
  std::vector<std::string> lines;
  for (const StoredTensor& t : tensors) {
    lines.push_back(Describe(t.name, t.dtype, t.shape, t.bytes));
  }
  return lines;
}

// Python's view of a state_dict, in the format of Describe above.
constexpr char kPythonDescribe[] = R"py(
import hashlib, sys, torch

def describe(sd):
    for k, v in sd.items():
        b = v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        shape = ','.join(str(d) for d in v.shape)
        print('T ' + '|'.join([k, str(v.dtype)[len('torch.'):], shape,
                               hashlib.sha256(b).hexdigest()]))
)py";

// The lines of `output` that start with `prefix`, less the prefix.
std::vector<std::string> Lines(const std::string& output, const std::string& prefix) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (absl::StartsWith(line, prefix)) lines.emplace_back(line.substr(prefix.size()));
  }
  return lines;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

class TorchFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/torch_file_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Names of the files in the test directory.
  std::vector<std::string> Files() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  // Runs `script` (after kPythonDescribe) with Debian's Python, which has
  // torch (package python3-torch, a dependency of tandem). Fails the test,
  // rather than skipping it, when that Python is missing or lacks torch.
  ::testing::AssertionResult Python(const std::string& script, std::string* output) {
    const std::string file = Path("script.py");
    WriteFile(file, absl::StrCat(kPythonDescribe, script));
    FILE* pipe = ::popen(absl::StrCat(kPython, " ", file, " 2>&1").c_str(), "r");
    if (pipe == nullptr) return ::testing::AssertionFailure() << "popen: " << std::strerror(errno);
    output->clear();
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
    const int status = ::pclose(pipe);
    fs::remove(file);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return ::testing::AssertionFailure()
             << kPython << " failed (status " << status
             << "); these tests need Python with torch: apt-get install python3-torch. Output:\n"
             << *output;
    }
    return ::testing::AssertionSuccess();
  }

  std::string dir_;
};

std::vector<Owned> SeveralTensors() {
  return {
      Make("layer.weight", v1::DTYPE_FLOAT32, {2, 3}, 1),
      Make("layer.bias", v1::DTYPE_FLOAT64, {5}, 2),
      Make("counts", v1::DTYPE_INT64, {2, 2, 2}, 3),
      Make("mask", v1::DTYPE_UINT8, {7}, 4),
      Make("scalar", v1::DTYPE_FLOAT32, {}, 5),
      Make("empty", v1::DTYPE_FLOAT32, {0, 3}, 6),
      Make("empty.middle", v1::DTYPE_INT64, {2, 0, 3}, 7),
      Make("half", v1::DTYPE_FLOAT16, {3}, 8),
      Make("brain", v1::DTYPE_BFLOAT16, {2, 2}, 9),
      Make("bl\xC3\xB6"
           "ck.w\xE2\x82\xAC"
           "ight",
           v1::DTYPE_FLOAT32, {4}, 10),
      // Larger than the writer's buffer, so it goes straight to the file.
      Make("big", v1::DTYPE_FLOAT32, {600, 500}, 11),
  };
}

TEST_F(TorchFileTest, RoundTripKeepsOrderNamesDtypesShapesAndBytes) {
  const std::vector<Owned> tensors = SeveralTensors();
  const std::string path = Path("model.pt");
  ASSERT_TRUE(WriteStateDict(path, Views(tensors)).ok());
  EXPECT_THAT(Files(), ElementsAre("model.pt"));

  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StoredTensor& t = (*read)[i];
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.dtype, tensors[i].dtype) << t.name;
    EXPECT_EQ(t.shape, tensors[i].shape) << t.name;
    EXPECT_TRUE(t.bytes == tensors[i].bytes) << t.name;
  }
}

TEST_F(TorchFileTest, EmptyStateDictRoundTrips) {
  const std::string path = Path("empty.pt");
  ASSERT_TRUE(WriteStateDict(path, {}).ok());
  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());
}

TEST_F(TorchFileTest, WriteReplacesAnExistingFileWholly) {
  const std::string path = Path("model.pt");
  const std::vector<Owned> first = {Make("a", v1::DTYPE_FLOAT32, {1000}, 1)};
  const std::vector<Owned> second = {Make("b", v1::DTYPE_INT64, {3}, 2)};
  ASSERT_TRUE(WriteStateDict(path, Views(first)).ok());
  ASSERT_TRUE(WriteStateDict(path, Views(second)).ok());
  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Describe(*read), ElementsAreArray(Describe(second)));
  EXPECT_THAT(Files(), ElementsAre("model.pt"));
}

TEST_F(TorchFileTest, PythonLoadsOurFile) {
  const std::vector<Owned> tensors = SeveralTensors();
  const std::string path = Path("ours.pt");
  const std::string empty_path = Path("none.pt");
  ASSERT_TRUE(WriteStateDict(path, Views(tensors)).ok());
  ASSERT_TRUE(WriteStateDict(empty_path, {}).ok());

  std::string out;
  ASSERT_TRUE(Python(absl::StrCat(R"py(
sd = torch.load(')py",
                                  path, R"py(')
assert isinstance(sd, dict), type(sd)
describe(sd)
safe = torch.load(')py",
                                  path, R"py(', weights_only=True)
assert list(safe) == list(sd)
assert all(torch.equal(safe[k], sd[k]) for k in sd)
assert all(not v.requires_grad and v.is_contiguous() for v in sd.values())
assert len(torch.load(')py",
                                  empty_path, R"py(')) == 0
print('OK')
)py"),
                     &out));
  EXPECT_THAT(Lines(out, "T "), ElementsAreArray(Describe(tensors))) << out;
  EXPECT_THAT(out, HasSubstr("OK"));
}

TEST_F(TorchFileTest, Zip64RecordsLoadInPythonAndBack) {
  // What a file over 4 GiB needs, forced for a small one.
  const std::vector<Owned> tensors = SeveralTensors();
  const std::string path = Path("zip64.pt");
  ASSERT_TRUE(internal::WriteStateDict(path, Views(tensors), /*zip64_threshold=*/0).ok());

  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Describe(*read), ElementsAreArray(Describe(tensors)));

  std::string out;
  ASSERT_TRUE(Python(absl::StrCat("describe(torch.load('", path, "'))\n"), &out));
  EXPECT_THAT(Lines(out, "T "), ElementsAreArray(Describe(tensors))) << out;
}

TEST_F(TorchFileTest, ReadsPythonSequentialStateDict) {
  const std::string path = Path("seq.pt");
  std::string out;
  ASSERT_TRUE(Python(absl::StrCat(R"py(
torch.manual_seed(1234)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
sd = model.state_dict()
assert hasattr(sd, '_metadata')
torch.save(sd, ')py",
                                  path, R"py(')
describe(sd)
print('B ' + ' '.join(repr(x) for x in sd['0.bias'].tolist()))
)py"),
                     &out));
  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 4u);
  EXPECT_EQ((*read)[0].name, "0.weight");
  EXPECT_EQ((*read)[0].shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ((*read)[1].name, "0.bias");
  EXPECT_EQ((*read)[2].name, "2.weight");
  EXPECT_EQ((*read)[2].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ((*read)[3].name, "2.bias");
  EXPECT_THAT(Describe(*read), ElementsAreArray(Lines(out, "T "))) << out;

  // The values themselves, as Python prints them.
  const std::vector<std::string> bias = Lines(out, "B ");
  ASSERT_EQ(bias.size(), 1u) << out;
  std::vector<float> expected;
  for (absl::string_view v : absl::StrSplit(bias[0], ' ')) {
    expected.push_back(std::stof(std::string(v)));
  }
  std::vector<float> got((*read)[1].bytes.size() / sizeof(float));
  std::memcpy(got.data(), (*read)[1].bytes.data(), (*read)[1].bytes.size());
  EXPECT_EQ(got, expected);
}

TEST_F(TorchFileTest, ReadsViewsOffsetsStridesAndParameters) {
  const std::string path = Path("views.pt");
  std::string out;
  ASSERT_TRUE(Python(absl::StrCat(R"py(
torch.manual_seed(7)
big = torch.arange(10.)
sd = {
    'a': big[2:5],                               # offset into a shared storage
    'b': big,
    'transposed': big.view(2, 5).t(),            # non-contiguous strides
    'window': big.view(2, 5)[:, 1:3],            # offset and strides
    'expanded': torch.tensor([1., 2.]).expand(3, 2),  # stride 0
    'scalar': torch.tensor(3.5),
    'empty': torch.zeros(0, 3),
    'long': torch.arange(6).view(2, 3),
    'bytes': torch.arange(250, 256, dtype=torch.uint8),
    'double': torch.randn(4, dtype=torch.float64),
    'half': torch.randn(3).half(),
    'bf16': torch.randn(3).bfloat16(),
    'param': torch.nn.Parameter(torch.ones(2)),
    'numel.over.65535': torch.randn(70000),     # BININT, not BININT2
}
torch.save(sd, ')py",
                                  path, R"py(')
describe(sd)
)py"),
                     &out));
  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Describe(*read), ElementsAreArray(Lines(out, "T "))) << out;

  ASSERT_FALSE(read->empty());
  const StoredTensor& a = (*read)[0];
  EXPECT_EQ(a.shape, std::vector<int64_t>{3});
  std::vector<float> values(3);
  ASSERT_EQ(a.bytes.size(), sizeof(float) * values.size());
  std::memcpy(values.data(), a.bytes.data(), a.bytes.size());
  EXPECT_THAT(values, ElementsAre(2.0f, 3.0f, 4.0f));
}

TEST_F(TorchFileTest, ReadsPickleProtocol4) {
  // FRAME, SHORT_BINUNICODE, STACK_GLOBAL and MEMOIZE instead of protocol 2's.
  const std::string path = Path("p4.pt");
  std::string out;
  ASSERT_TRUE(Python(absl::StrCat(R"py(
torch.manual_seed(3)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
sd = model.state_dict()
torch.save(sd, ')py",
                                  path, R"py(', pickle_protocol=4)
describe(sd)
)py"),
                     &out));
  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Describe(*read), ElementsAreArray(Lines(out, "T "))) << out;
}

TEST_F(TorchFileTest, FilesThatAreNotStateDictsGiveClearErrors) {
  std::string out;
  ASSERT_TRUE(Python(absl::StrCat(R"py(
import zipfile
d = ')py",
                                  dir_, R"py('
torch.save({'w': torch.arange(3, dtype=torch.int32)}, d + '/int32.pt')
torch.save({'w': torch.ones(1), 's': {1, 2}}, d + '/set.pt', pickle_protocol=4)
torch.save({'w': torch.ones(1), 'epoch': 3}, d + '/epoch.pt')
torch.save([torch.ones(1)], d + '/list.pt')
torch.save({'w': torch.ones(1)}, d + '/legacy.pt', _use_new_zipfile_serialization=False)
torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), d + '/script.pt')
with zipfile.ZipFile(d + '/other.zip', 'w') as z:
    z.writestr('docs/readme.txt', 'hello')
with zipfile.ZipFile(d + '/deflated.pt', 'w', compression=zipfile.ZIP_DEFLATED) as z:
    with zipfile.ZipFile(d + '/int32.pt') as src:
        for name in src.namelist():
            z.writestr(name, src.read(name))
)py"),
                     &out));
  struct Case {
    const char* file;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"int32.pt", absl::StatusCode::kInvalidArgument, "dtype int32 (torch.IntStorage)"},
      {"set.pt", absl::StatusCode::kInvalidArgument, "unsupported pickle opcode 0x8f (EMPTY_SET)"},
      {"epoch.pt", absl::StatusCode::kInvalidArgument, "value of 'epoch' is an int, not a tensor"},
      {"list.pt", absl::StatusCode::kInvalidArgument, "holds a list, not a dict of tensors"},
      {"legacy.pt", absl::StatusCode::kInvalidArgument, "legacy torch.save format"},
      {"script.pt", absl::StatusCode::kInvalidArgument, "TorchScript"},
      {"other.zip", absl::StatusCode::kInvalidArgument, "without docs/data.pkl"},
      {"deflated.pt", absl::StatusCode::kInvalidArgument, "compressed (method 8)"},
  };
  for (const Case& c : cases) {
    const std::string path = Path(c.file);
    auto read = ReadStateDict(path);
    ASSERT_FALSE(read.ok()) << c.file;
    EXPECT_EQ(read.status().code(), c.code) << read.status();
    EXPECT_THAT(std::string(read.status().message()), HasSubstr(path));
    EXPECT_THAT(std::string(read.status().message()), HasSubstr(c.message));
  }
}

TEST_F(TorchFileTest, MissingFileIsNotFound) {
  const std::string path = Path("absent.pt");
  auto read = ReadStateDict(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound) << read.status();
  EXPECT_THAT(std::string(read.status().message()), HasSubstr(path));
}

TEST_F(TorchFileTest, NonZipAndEmptyFilesAreInvalidArgument) {
  const std::string text = Path("notes.txt");
  WriteFile(text, "these are not the tensors you are looking for\n");
  auto read = ReadStateDict(text);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
  EXPECT_THAT(std::string(read.status().message()), HasSubstr(text));
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("not a zip archive"));

  const std::string empty = Path("empty.pt");
  WriteFile(empty, "");
  read = ReadStateDict(empty);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("empty"));

  read = ReadStateDict(dir_);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << read.status();
}

TEST_F(TorchFileTest, EveryTruncationIsDataLoss) {
  const std::vector<Owned> tensors = {Make("w", v1::DTYPE_FLOAT32, {3, 5}, 1),
                                      Make("b", v1::DTYPE_INT64, {5}, 2)};
  const std::string path = Path("model.pt");
  ASSERT_TRUE(WriteStateDict(path, Views(tensors)).ok());
  const std::string whole = ReadFile(path);
  const std::string cut = Path("cut.pt");
  for (size_t size = 4; size < whole.size(); ++size) {
    WriteFile(cut, whole.substr(0, size));
    auto read = ReadStateDict(cut);
    ASSERT_EQ(read.status().code(), absl::StatusCode::kDataLoss)
        << "cut to " << size << " of " << whole.size() << " bytes: " << read.status();
    ASSERT_THAT(std::string(read.status().message()), HasSubstr(cut));
  }
}

TEST_F(TorchFileTest, CorruptTensorBytesFailTheirCrc) {
  const std::vector<Owned> tensors = {Make("w", v1::DTYPE_FLOAT32, {64}, 1),
                                      Make("b", v1::DTYPE_FLOAT32, {64}, 2)};
  const std::string path = Path("model.pt");
  ASSERT_TRUE(WriteStateDict(path, Views(tensors)).ok());
  std::string bytes = ReadFile(path);
  const size_t at = bytes.find(tensors[1].bytes);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 17] ^= 0x01;
  WriteFile(path, bytes);

  auto read = ReadStateDict(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  EXPECT_THAT(std::string(read.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("'archive/data/1' fails its CRC"));
}

TEST_F(TorchFileTest, EverySingleByteCorruptionIsCaughtOrHarmless) {
  const std::vector<Owned> tensors = {Make("w", v1::DTYPE_FLOAT32, {2, 3}, 1),
                                      Make("s", v1::DTYPE_INT64, {}, 2)};
  const std::string path = Path("model.pt");
  ASSERT_TRUE(WriteStateDict(path, Views(tensors)).ok());
  const std::string whole = ReadFile(path);
  const std::string bad = Path("bad.pt");
  for (size_t i = 0; i < whole.size(); ++i) {
    std::string bytes = whole;
    bytes[i] ^= 0x5A;
    WriteFile(bad, bytes);
    auto read = ReadStateDict(bad);
    if (read.ok()) {
      // Only bytes no reader relies on (padding, timestamps): same tensors.
      ASSERT_THAT(Describe(*read), ElementsAreArray(Describe(tensors))) << "byte " << i;
    } else {
      ASSERT_THAT(std::string(read.status().message()), HasSubstr(bad)) << "byte " << i;
    }
  }
}

TEST_F(TorchFileTest, WriteRejectsInvalidTensorsAndLeavesNoFile) {
  const std::string path = Path("model.pt");
  const std::string four(4, '\0');
  auto view = [&](std::string name, v1::DType dtype, std::vector<int64_t> shape) {
    TensorView v;
    v.name = std::move(name);
    v.dtype = dtype;
    v.shape = std::move(shape);
    v.data = four.data();
    v.bytes = four.size();
    return v;
  };
  const TensorView ok = view("ok", v1::DTYPE_FLOAT32, {1});
  TensorView no_data = ok;
  no_data.data = nullptr;
  const std::vector<std::pair<std::vector<TensorView>, const char*>> cases = {
      {{view("", v1::DTYPE_FLOAT32, {1})}, "has no name"},
      {{ok, ok}, "duplicate name"},
      {{view("x", v1::DTYPE_FLOAT32, {2})}, "has 4 bytes; its shape and dtype need 8"},
      {{view("x", v1::DTYPE_UNSPECIFIED, {1})}, "DTYPE_UNSPECIFIED"},
      {{view("x", v1::DTYPE_UINT8, {-4})}, "negative"},
      {{view("bad\xFFname", v1::DTYPE_FLOAT32, {1})}, "UTF-8"},
      {{no_data}, "no data"},
  };
  for (const auto& [tensors, message] : cases) {
    absl::Status s = WriteStateDict(path, tensors);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(message));
    EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  }
  EXPECT_TRUE(Files().empty());
}

TEST_F(TorchFileTest, WriteIntoMissingDirectoryIsNotFound) {
  const std::string path = Path("no/such/dir/model.pt");
  const std::vector<Owned> tensors = {Make("w", v1::DTYPE_FLOAT32, {2}, 1)};
  absl::Status s = WriteStateDict(path, Views(tensors));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
}

TEST_F(TorchFileTest, FailedWriteKeepsTheOldFileAndLeavesNoTemporary) {
  const std::string path = Path("model.pt");
  const std::vector<Owned> old_tensors = {Make("old", v1::DTYPE_FLOAT32, {16}, 1)};
  ASSERT_TRUE(WriteStateDict(path, Views(old_tensors)).ok());
  const std::string old_bytes = ReadFile(path);

  // A child whose file size limit (RLIMIT_FSIZE) is far below the new file's
  // size: its writes fail with EFBIG partway through.
  const std::vector<Owned> big = {Make("big", v1::DTYPE_FLOAT32, {1 << 20}, 2)};
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit = {64 << 10, 64 << 10};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    absl::Status s = WriteStateDict(path, Views(big));
    ::_exit(!s.ok() && absl::StrContains(s.message(), path) ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the write did not fail with an error naming the file";

  EXPECT_THAT(Files(), ElementsAre("model.pt"));
  EXPECT_TRUE(ReadFile(path) == old_bytes);
  auto read = ReadStateDict(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Describe(*read), ElementsAreArray(Describe(old_tensors)));
}

}  // namespace
}  // namespace tandem
