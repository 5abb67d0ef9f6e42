#include "checkpoint/digest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_store.h"

namespace tandem {
namespace {

std::string HexOf(const std::string& s) { return ToHex(Sha256Of(s.data(), s.size())); }

TensorView View(const std::string& name, const std::string& bytes) {
  TensorView v;
  v.name = name;
  v.dtype = v1::DTYPE_UINT8;
  v.shape = {static_cast<int64_t>(bytes.size())};
  v.data = bytes.data();
  v.bytes = bytes.size();
  return v;
}

// FIPS 180-2 / NIST known answers.
TEST(Sha256Test, KnownAnswers) {
  EXPECT_EQ(HexOf("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexOf(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexOf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(HexOf(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalEqualsOneShot) {
  const std::string message(10000, 'x');
  Sha256 sha;
  for (size_t offset = 0; offset < message.size(); offset += 777) {
    sha.Update(message.data() + offset, std::min<size_t>(777, message.size() - offset));
  }
  EXPECT_EQ(sha.Finish(), Sha256Of(message.data(), message.size()));
}

TEST(Sha256Test, FinishStartsANewMessage) {
  Sha256 sha;
  sha.Update("garbage", 7);
  sha.Finish();
  sha.Update("abc", 3);
  EXPECT_EQ(ToHex(sha.Finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// Bytes i % 251 for i in [0, n): the inputs of the BLAKE3 known answers below.
std::string Pattern251(size_t n) {
  std::string bytes(n, '\0');
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>(i % 251);
  return bytes;
}

std::string Blake3Hex(const std::string& s) { return ToHex(Blake3Of(s.data(), s.size())); }

// Known answers (b3sum and the BLAKE3 paper's examples): one block, one whole
// chunk, a chunk and a byte (a parent node), and a 4 MiB piece and 7 bytes.
TEST(Blake3Test, KnownAnswers) {
  EXPECT_EQ(Blake3Hex(""), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
  EXPECT_EQ(Blake3Hex("abc"), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  EXPECT_EQ(Blake3Hex(Pattern251(1024)),
            "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7");
  EXPECT_EQ(Blake3Hex(Pattern251(1025)),
            "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444");
  EXPECT_EQ(Blake3Hex(Pattern251(kStateDigestPieceBytes + 7)),
            "9c1461e3de2a470b93d5ad72d82c75c5b2ea158518b4c671cce056fd22a5e3fd");
}

TEST(Blake3Test, IncrementalEqualsOneShotAndFinishStartsANewMessage) {
  const std::string message = Pattern251(100000);
  Blake3 blake3;
  blake3.Update("garbage", 7);
  blake3.Finish();
  for (size_t offset = 0; offset < message.size(); offset += 777) {
    blake3.Update(message.data() + offset, std::min<size_t>(777, message.size() - offset));
  }
  EXPECT_EQ(blake3.Finish(), Blake3Of(message.data(), message.size()));
}

TEST(PieceHashTest, Blake3FromFormat3AndSha256Before) {
  const std::string bytes = "piece";
  EXPECT_EQ(PieceHashOf(3, bytes.data(), bytes.size()), Blake3Of(bytes.data(), bytes.size()));
  EXPECT_EQ(PieceHashOf(2, bytes.data(), bytes.size()), Sha256Of(bytes.data(), bytes.size()));
  EXPECT_EQ(kStateDigestFormat, 3u);
  EXPECT_STREQ(PieceHashName(3), "BLAKE3");
  EXPECT_STREQ(PieceHashName(2), "SHA-256");
}

TEST(ToHexTest, LowercaseTwoDigitsPerByte) {
  const uint8_t bytes[] = {0x00, 0x0f, 0xab, 0xff};
  EXPECT_EQ(ToHex(bytes, sizeof(bytes)), "000fabff");
  EXPECT_EQ(ToHex(bytes, 0), "");
}

void AddHeader(Sha256& sha, const std::string& name, uint64_t bytes) {
  sha.Update(name.data(), name.size());
  sha.Update("\0", 1);
  uint8_t le[8] = {};
  for (uint8_t& b : le) {
    b = static_cast<uint8_t>(bytes & 0xff);
    bytes >>= 8;
  }
  sha.Update(le, 8);
}

// The hash of a piece in each format, spelled out rather than by PieceHashOf.
Hash256 PieceOf(uint32_t format, const void* data, size_t bytes) {
  return format == 3 ? Blake3Of(data, bytes) : Sha256Of(data, bytes);
}

class StateDigestFormatTest : public testing::TestWithParam<uint32_t> {};

INSTANTIATE_TEST_SUITE_P(Formats, StateDigestFormatTest, testing::Values(2u, 3u));

// The digest of two small tensors, "w" and "b", spelled out: format 1
// hashes their bytes, later formats the PieceOf them (one piece each).
const std::string kW = "weights!";
const std::string kB = "bias";

std::string SpelledOutDigestOfWAndB(uint32_t format) {
  Sha256 sha;
  for (const auto& [name, bytes] :
       {std::pair{std::string("w"), kW}, std::pair{std::string("b"), kB}}) {
    AddHeader(sha, name, bytes.size());
    if (format == 1) {
      sha.Update(bytes.data(), bytes.size());
    } else {
      const Hash256 piece = PieceOf(format, bytes.data(), bytes.size());
      sha.Update(piece.data(), piece.size());
    }
  }
  return ToHex(sha.Finish());
}

TEST_P(StateDigestFormatTest, MatchesTheDocumentedLayout) {
  EXPECT_EQ(StateDigest({View("w", kW), View("b", kB)}, GetParam()),
            SpelledOutDigestOfWAndB(GetParam()));
}

TEST_P(StateDigestFormatTest, HashesPiecesOfFourMiB) {
  ASSERT_EQ(kStateDigestPieceBytes, 4u << 20);
  std::string big(2 * kStateDigestPieceBytes + 3, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 + (i >> 20));
  Sha256 sha;
  AddHeader(sha, "t", big.size());
  for (size_t offset = 0; offset < big.size(); offset += kStateDigestPieceBytes) {
    const Hash256 piece = PieceOf(GetParam(), big.data() + offset,
                                  std::min(kStateDigestPieceBytes, big.size() - offset));
    sha.Update(piece.data(), piece.size());
  }
  AddHeader(sha, "empty", 0);  // no pieces at all
  EXPECT_EQ(StateDigest({View("t", big), View("empty", "")}, GetParam()), ToHex(sha.Finish()));
}

TEST_P(StateDigestFormatTest, SizeIsLittleEndian) {
  const std::string big(0x0102, 'z');
  Sha256 sha;
  sha.Update("t\0", 2);
  const uint8_t le[8] = {0x02, 0x01, 0, 0, 0, 0, 0, 0};
  sha.Update(le, 8);
  const Hash256 piece = PieceOf(GetParam(), big.data(), big.size());
  sha.Update(piece.data(), piece.size());
  EXPECT_EQ(StateDigest({View("t", big)}, GetParam()), ToHex(sha.Finish()));
}

TEST(StateDigestTest, DefaultsToTheCurrentFormat) {
  const std::string w = "weights!";
  EXPECT_EQ(StateDigest({View("w", w)}), StateDigest({View("w", w)}, kStateDigestFormat));
  EXPECT_NE(StateDigest({View("w", w)}, 3), StateDigest({View("w", w)}, 2));
}

TEST(StateDigestTest, SensitiveToOrderNamesAndBoundaries) {
  const std::string x = "xx";
  const std::string y = "yy";
  const std::string base = StateDigest({View("a", x), View("b", y)});
  EXPECT_NE(base, StateDigest({View("b", y), View("a", x)}));
  EXPECT_NE(base, StateDigest({View("a", x), View("c", y)}));
  EXPECT_NE(base, StateDigest({View("a", "xxy"), View("b", "y")}));
  EXPECT_EQ(base, StateDigest({View("a", std::string("xx")), View("b", std::string("yy"))}));
}

TEST(StateDigestTest, EmptyStateIsHashOfNothing) { EXPECT_EQ(StateDigest({}), HexOf("")); }

// Format 1 manifests keep their definition: one SHA-256 over every byte.
TEST(StateDigestV1Test, MatchesTheFormat1Layout) {
  const std::vector<TensorView> views = {View("w", kW), View("b", kB)};
  EXPECT_EQ(StateDigestV1(views), SpelledOutDigestOfWAndB(1));
  EXPECT_NE(StateDigestV1(views), StateDigest(views));
}

// A builder fed bytes in any split, or piece digests where they fit, gives
// the one-shot digest of either format.
TEST(StateDigestBuilderTest, BytesAndPiecesAgreeWithOneShot) {
  std::string a(kStateDigestPieceBytes + 1000, '\0');
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i * 7 + (i >> 16));
  const std::string b = "tail";
  const std::vector<TensorView> views = {View("a", a), View("b", b)};
  for (uint32_t format : {1u, 2u, 3u}) {
    SCOPED_TRACE(format);
    const std::string want = format == 1 ? StateDigestV1(views) : StateDigest(views, format);
    StateDigestBuilder odd_splits(format);
    for (const TensorView& v : views) {
      odd_splits.BeginTensor(v.name, v.bytes);
      const char* data = static_cast<const char*>(v.data);
      for (size_t offset = 0; offset < v.bytes; offset += 999999) {
        odd_splits.AddBytes(data + offset, std::min<size_t>(999999, v.bytes - offset));
      }
    }
    EXPECT_EQ(odd_splits.Finish(), want);

    StateDigestBuilder pieces(format);
    pieces.BeginTensor("a", a.size());
    EXPECT_EQ(pieces.IsPiece(kStateDigestPieceBytes), format >= 2);
    EXPECT_FALSE(pieces.IsPiece(1000));  // neither a whole piece nor the rest
    if (format >= 2) {
      pieces.AddPiece(PieceOf(format, a.data(), kStateDigestPieceBytes), kStateDigestPieceBytes);
      EXPECT_TRUE(pieces.IsPiece(1000));
      pieces.AddPiece(PieceOf(format, a.data() + kStateDigestPieceBytes, 1000), 1000);
    } else {
      pieces.AddBytes(a.data(), a.size());
    }
    pieces.BeginTensor("b", b.size());
    pieces.AddBytes(b.data(), b.size());
    EXPECT_EQ(pieces.Finish(), want);
  }
}

}  // namespace
}  // namespace tandem
