// FaultInjectionFs: a RocksDB FileSystem for crash tests, in the manner of
// leveldb's fault_injection_test. It passes every call to the local file
// system, numbers the operations that change what is on disk (create, append,
// sync, close, truncate, rename, delete, directory fsync), and can inject one
// fault at the N-th of them or call a hook before each (to freeze a child
// process there and kill it). The info log (LOG, LOG.old.*) is passed through
// uncounted, since when RocksDB writes it depends on timers.
//
// Thread-safe: RocksDB calls it from its own threads too.
#ifndef TANDEM_TESTS_CHECKPOINT_FAULT_INJECTION_FS_H_
#define TANDEM_TESTS_CHECKPOINT_FAULT_INJECTION_FS_H_

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/io_status.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tandem {

enum class FileOpKind { kCreate, kAppend, kSync, kClose, kTruncate, kRename, kDelete, kSyncDir };
const char* FileOpKindName(FileOpKind kind);

struct FileOp {
  FileOpKind kind;
  std::string path;  // for kRename, the source
};

enum class Fault {
  // The operation does nothing and returns an IOError.
  kIOError,
  // The operation does nothing and returns IOError NoSpace (ENOSPC).
  kNoSpace,
  // An append writes the first half of its bytes and returns OK, as write(2)
  // into the page cache does before writeback fails: the rest of that append
  // and every later one to the file are lost, and every later sync of the file
  // returns an IOError. Only for kAppend operations.
  kShortWrite,
  // Power fails just before the operation: it and every later counted
  // operation return an IOError, and DropUnsyncedData() afterwards takes away
  // what was written but not synced.
  kPowerLoss,
};
const char* FaultName(Fault fault);

class FaultInjectionFs : public rocksdb::FileSystemWrapper {
 public:
  // With `skip_real_syncs`, syncs of files and directories succeed (and count
  // as syncs here) without reaching the disk: the crash tests model durability
  // themselves (kill -9 loses nothing synced or not; kPowerLoss uses this
  // object's record), and real fsyncs would make hundreds of opens take long.
  explicit FaultInjectionFs(bool skip_real_syncs = false);
  const char* Name() const override { return "FaultInjectionFs"; }

  // Starts counting from zero with no fault armed, forgets the log and the
  // files written so far (they count as durable).
  void Reset();
  // Reset(), then arms `fault` at the `n`-th counted operation (1-based).
  void InjectAt(uint64_t n, Fault fault);
  // Runs before every counted operation, with its 1-based number, outside this
  // object's lock. Used to freeze a forked child at one operation.
  void SetHook(std::function<void(uint64_t, const FileOp&)> hook);

  uint64_t ops() const;
  std::vector<FileOp> log() const;
  bool fired() const;

  // After a kPowerLoss, with the database closed: truncates every file written
  // since Reset() to its size at its last successful sync (an unsynced new
  // file becomes empty). Files created or renamed before their directory was
  // synced are kept; RocksDB's own tests cover that.
  rocksdb::IOStatus DropUnsyncedData();

  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& options,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& target,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& fname, size_t size,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;

 private:
  class File;
  class Directory;
  struct FileState {
    uint64_t size = 0;
    uint64_t synced = 0;
    bool broken = false;  // a kShortWrite lost data: later writes vanish, syncs fail
  };
  enum class Action { kPass, kFail, kShortWrite };

  // Counts the operation, runs the hook, and says what to do; `*status` is
  // the error to return for kFail.
  Action Before(FileOpKind kind, const std::string& path, rocksdb::IOStatus* status);
  static bool Ignored(const std::string& path);
  rocksdb::IOStatus Wrap(const std::string& fname, bool truncated,
                         std::unique_ptr<rocksdb::FSWritableFile>* result);

  const bool skip_real_syncs_;
  mutable std::mutex mu_;
  uint64_t ops_ = 0;
  uint64_t fault_at_ = 0;  // 0 = none
  Fault fault_ = Fault::kIOError;
  bool fired_ = false;
  bool powered_off_ = false;
  std::vector<FileOp> log_;
  std::map<std::string, FileState> files_;  // written since Reset(), by path
  std::function<void(uint64_t, const FileOp&)> hook_;
};

// An Env whose file system is `fs`, whose sleeps return at once (RocksDB
// waits a second after each failed flush; the crash tests fail hundreds), and
// otherwise the default Env. With `own_threads`, RocksDB's background jobs
// (flushes, compactions) run on thread pools of its own: for a forked child,
// where the default Env's pools came through fork() without their threads, so
// that a job scheduled there would never run (and a Save, which waits for
// the flush of its chunks, would never return).
std::shared_ptr<rocksdb::Env> NewFaultInjectionEnv(const std::shared_ptr<FaultInjectionFs>& fs,
                                                   bool own_threads = false);

}  // namespace tandem

#endif  // TANDEM_TESTS_CHECKPOINT_FAULT_INJECTION_FS_H_
