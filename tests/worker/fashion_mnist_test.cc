#include "worker/fashion_mnist.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <array>
#include <filesystem>
#include <fstream>

#include "tests/support/run_tandem.h"
#include "worker/job_spec.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

const std::string kDir = kDefaultFashionMnistPath;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

void WriteGz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

// A copy of the real dataset folder in which one file can be damaged.
class DamagedDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
      std::filesystem::copy_file(kDir + "/" + name, dir_.Join(name));
    }
  }
  std::string Path(const char* name) const { return dir_.Join(name); }

  testing::TempDir dir_;
};

TEST(FashionMnistTest, LoadsTheRealTrainingAndTestSets) {
  absl::StatusOr<MnistSplit> train = LoadFashionMnist(kDir, Split::kTrain);
  ASSERT_TRUE(train.ok()) << train.status();
  EXPECT_EQ(train->count, 60000u);
  EXPECT_EQ(train->rows, 28u);
  EXPECT_EQ(train->cols, 28u);
  EXPECT_EQ(train->images.size(), 60000u * 28 * 28);
  std::array<int, 10> per_class{};
  for (uint8_t label : train->labels) ++per_class[label];
  for (int count : per_class) EXPECT_EQ(count, 6000);  // Fashion-MNIST is balanced

  absl::StatusOr<MnistSplit> test = LoadFashionMnist(kDir, Split::kTest);
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_EQ(test->count, 10000u);
}

TEST_F(DamagedDatasetTest, MissingFileIsNamed) {
  std::filesystem::remove(Path("t10k-labels-idx1-ubyte.gz"));
  absl::StatusOr<MnistSplit> test = LoadFashionMnist(dir_.path(), Split::kTest);
  ASSERT_TRUE(absl::IsNotFound(test.status())) << test.status();
  EXPECT_THAT(test.status().message(), HasSubstr("t10k-labels-idx1-ubyte.gz"));
}

TEST_F(DamagedDatasetTest, TruncatedFileIsNamed) {
  const std::string path = Path("train-images-idx3-ubyte.gz");
  const std::string bytes = ReadBytes(path);
  WriteBytes(path, bytes.substr(0, bytes.size() / 2));
  absl::StatusOr<MnistSplit> train = LoadFashionMnist(dir_.path(), Split::kTrain);
  ASSERT_TRUE(absl::IsDataLoss(train.status())) << train.status();
  EXPECT_THAT(train.status().message(), HasSubstr(path));
}

TEST_F(DamagedDatasetTest, CorruptCompressedDataIsDetected) {
  const std::string path = Path("t10k-images-idx3-ubyte.gz");
  std::string bytes = ReadBytes(path);
  bytes[bytes.size() / 2] ^= 0x5a;
  WriteBytes(path, bytes);
  absl::StatusOr<MnistSplit> test = LoadFashionMnist(dir_.path(), Split::kTest);
  ASSERT_TRUE(absl::IsDataLoss(test.status())) << test.status();
  EXPECT_THAT(test.status().message(), HasSubstr(path));
}

TEST_F(DamagedDatasetTest, NotAnIdxFileIsNamed) {
  const std::string path = Path("t10k-labels-idx1-ubyte.gz");
  WriteGz(path, "this is not an IDX file");
  absl::StatusOr<MnistSplit> test = LoadFashionMnist(dir_.path(), Split::kTest);
  ASSERT_TRUE(absl::IsDataLoss(test.status())) << test.status();
  EXPECT_THAT(test.status().message(), HasSubstr(path));
  EXPECT_THAT(test.status().message(), HasSubstr("not an unsigned-byte IDX file"));
}

TEST_F(DamagedDatasetTest, CountMismatchBetweenImagesAndLabels) {
  // A valid IDX label file with 3 labels against 10,000 images.
  const std::string path = Path("t10k-labels-idx1-ubyte.gz");
  WriteGz(path, std::string("\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03", 11));
  absl::StatusOr<MnistSplit> test = LoadFashionMnist(dir_.path(), Split::kTest);
  ASSERT_TRUE(absl::IsDataLoss(test.status())) << test.status();
  EXPECT_THAT(test.status().message(), HasSubstr("10000 images"));
  EXPECT_THAT(test.status().message(), HasSubstr("3 labels"));
}

}  // namespace
}  // namespace tandem
