#include "tests/support/damage_store.h"

#include <rocksdb/db.h>
#include <rocksdb/utilities/options_util.h>

#include <memory>
#include <vector>

namespace tandem::testing {

absl::Status FlipBitOfChunk(const std::string& dir, const std::string& sha256) {
  rocksdb::ConfigOptions config;
  rocksdb::DBOptions db_options;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  rocksdb::Status s = rocksdb::LoadLatestOptions(config, dir, &db_options, &families);
  if (!s.ok()) return absl::InternalError(s.ToString());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  s = rocksdb::DB::Open(db_options, dir, families, &handles, &raw);
  if (!s.ok()) return absl::InternalError(s.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::ColumnFamilyHandle* chunks = nullptr;
  for (size_t i = 0; i < families.size(); ++i) {
    if (families[i].name == "chunks") chunks = handles[i];
  }
  absl::Status result;
  std::string value;
  if (chunks == nullptr) {
    result = absl::NotFoundError("no chunks column family in " + dir);
  } else if (!(s = db->Get(rocksdb::ReadOptions(), chunks, sha256, &value)).ok()) {
    result = absl::NotFoundError("chunk not found: " + s.ToString());
  } else {
    value[value.size() / 2] ^= 0x10;
    s = db->Put(rocksdb::WriteOptions(), chunks, sha256, value);
    if (!s.ok()) result = absl::InternalError(s.ToString());
  }
  for (rocksdb::ColumnFamilyHandle* h : handles) db->DestroyColumnFamilyHandle(h);
  return result;
}

}  // namespace tandem::testing
