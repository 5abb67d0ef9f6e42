#include "transport/crc32c.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace tandem {
namespace {

// Known answers: the CRC catalogue's check value and RFC 3720 (iSCSI) B.4.
TEST(Crc32cTest, KnownAnswers) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  const std::string data = "The quick brown fox jumps over the lazy dog, twice over.";
  for (size_t cut = 0; cut <= data.size(); ++cut) {
    EXPECT_EQ(Crc32cExtend(Crc32c(data.substr(0, cut)), data.data() + cut, data.size() - cut),
              Crc32c(data));
  }
}

TEST(Crc32cTest, HardwareAndPortableAgreeAtEveryAlignmentAndLength) {
  if (!crc32c_internal::HardwareAvailable()) GTEST_SKIP() << "no SSE4.2 on this CPU";
  std::mt19937 rng(1);
  std::string buffer(4096 + 64, '\0');
  for (char& c : buffer) c = static_cast<char>(rng());
  for (size_t start = 0; start < 16; ++start) {
    for (size_t size : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096}) {
      const char* p = buffer.data() + start;
      EXPECT_EQ(crc32c_internal::ExtendHardware(0x12345678u, p, size),
                crc32c_internal::ExtendPortable(0x12345678u, p, size))
          << "start " << start << " size " << size;
    }
  }
}

TEST(Crc32cTest, DetectsAFlippedBit) {
  std::string data(1 << 20, 'x');
  const uint32_t crc = Crc32c(data);
  data[12345] ^= 0x01;
  EXPECT_NE(Crc32c(data), crc);
}

}  // namespace
}  // namespace tandem
