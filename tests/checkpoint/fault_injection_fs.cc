#include "tests/checkpoint/fault_injection_fs.h"

#include <errno.h>
#include <rocksdb/system_clock.h>
#include <rocksdb/threadpool.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace tandem {

using rocksdb::FSWritableFile;
using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;
using rocksdb::Slice;

const char* FileOpKindName(FileOpKind kind) {
  switch (kind) {
    case FileOpKind::kCreate:
      return "create";
    case FileOpKind::kAppend:
      return "append";
    case FileOpKind::kSync:
      return "sync";
    case FileOpKind::kClose:
      return "close";
    case FileOpKind::kTruncate:
      return "truncate";
    case FileOpKind::kRename:
      return "rename";
    case FileOpKind::kDelete:
      return "delete";
    case FileOpKind::kSyncDir:
      return "fsync-dir";
  }
  return "?";
}

const char* FaultName(Fault fault) {
  switch (fault) {
    case Fault::kIOError:
      return "io-error";
    case Fault::kNoSpace:
      return "no-space";
    case Fault::kShortWrite:
      return "short-write";
    case Fault::kPowerLoss:
      return "power-loss";
  }
  return "?";
}

// A writable file whose appends, syncs, truncates and close go through
// FaultInjectionFs::Before and whose size and synced size it tracks.
class FaultInjectionFs::File : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  File(FaultInjectionFs* fs, std::string path, std::unique_ptr<FSWritableFile> target)
      : FSWritableFileOwnerWrapper(std::move(target)), fs_(fs), path_(std::move(path)) {}

  IOStatus Append(const Slice& data, const IOOptions& options, IODebugContext* dbg) override {
    return Write(data, [&](const Slice& d) { return target()->Append(d, options, dbg); });
  }
  IOStatus Append(const Slice& data, const IOOptions& options,
                  const rocksdb::DataVerificationInfo& info, IODebugContext* dbg) override {
    // The checksum covers all of `data`; a short write passes on only part.
    return Write(data, [&](const Slice& d) {
      return d.size() == data.size() ? target()->Append(d, options, info, dbg)
                                     : target()->Append(d, options, dbg);
    });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            IODebugContext* dbg) override {
    return Write(
        data, [&](const Slice& d) { return target()->PositionedAppend(d, offset, options, dbg); });
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& options,
                            const rocksdb::DataVerificationInfo& info,
                            IODebugContext* dbg) override {
    return Write(data, [&](const Slice& d) {
      return d.size() == data.size() ? target()->PositionedAppend(d, offset, options, info, dbg)
                                     : target()->PositionedAppend(d, offset, options, dbg);
    });
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    return SyncWith([&] { return target()->Sync(options, dbg); });
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    return SyncWith([&] { return target()->Fsync(options, dbg); });
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options, IODebugContext* dbg) override {
    IOStatus injected;
    if (fs_->Before(FileOpKind::kTruncate, path_, &injected) == Action::kFail) return injected;
    IOStatus s = target()->Truncate(size, options, dbg);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      auto it = fs_->files_.find(path_);
      if (it != fs_->files_.end()) {
        it->second.size = size;
        it->second.synced = std::min(it->second.synced, it->second.size);
      }
    }
    return s;
  }
  IOStatus Close(const IOOptions& options, IODebugContext* dbg) override {
    IOStatus injected;
    if (fs_->Before(FileOpKind::kClose, path_, &injected) == Action::kFail) return injected;
    return target()->Close(options, dbg);
  }

 private:
  template <typename WriteFn>
  IOStatus Write(const Slice& data, WriteFn write) {
    IOStatus injected;
    const Action action = fs_->Before(FileOpKind::kAppend, path_, &injected);
    if (action == Action::kFail) return injected;
    bool broken = false;
    {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      auto it = fs_->files_.find(path_);
      broken = it != fs_->files_.end() && it->second.broken;
    }
    if (broken) return IOStatus::OK();  // lost in the page cache, reported on sync
    const Slice part = action == Action::kShortWrite ? Slice(data.data(), data.size() / 2) : data;
    IOStatus s = write(part);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      auto it = fs_->files_.find(path_);
      if (it != fs_->files_.end()) {
        it->second.size += part.size();
        if (action == Action::kShortWrite) it->second.broken = true;
      }
    }
    return s;
  }

  template <typename SyncFn>
  IOStatus SyncWith(SyncFn sync) {
    IOStatus injected;
    if (fs_->Before(FileOpKind::kSync, path_, &injected) == Action::kFail) return injected;
    {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      auto it = fs_->files_.find(path_);
      if (it != fs_->files_.end() && it->second.broken) {
        return IOStatus::IOError("injected fault: writeback of an earlier short write failed",
                                 path_);
      }
    }
    IOStatus s = fs_->skip_real_syncs_ ? IOStatus::OK() : sync();
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      auto it = fs_->files_.find(path_);
      if (it != fs_->files_.end()) it->second.synced = it->second.size;
    }
    return s;
  }

  FaultInjectionFs* const fs_;
  const std::string path_;
};

class FaultInjectionFs::Directory : public rocksdb::FSDirectoryWrapper {
 public:
  Directory(FaultInjectionFs* fs, std::string path, std::unique_ptr<rocksdb::FSDirectory> target)
      : FSDirectoryWrapper(std::move(target)), fs_(fs), path_(std::move(path)) {}

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    IOStatus injected;
    if (fs_->Before(FileOpKind::kSyncDir, path_, &injected) == Action::kFail) return injected;
    if (fs_->skip_real_syncs_) return IOStatus::OK();
    return FSDirectoryWrapper::Fsync(options, dbg);
  }
  IOStatus FsyncWithDirOptions(const IOOptions& options, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_options) override {
    IOStatus injected;
    if (fs_->Before(FileOpKind::kSyncDir, path_, &injected) == Action::kFail) return injected;
    if (fs_->skip_real_syncs_) return IOStatus::OK();
    return FSDirectoryWrapper::FsyncWithDirOptions(options, dbg, dir_options);
  }

 private:
  FaultInjectionFs* const fs_;
  const std::string path_;
};

FaultInjectionFs::FaultInjectionFs(bool skip_real_syncs)
    : FileSystemWrapper(rocksdb::FileSystem::Default()), skip_real_syncs_(skip_real_syncs) {}

void FaultInjectionFs::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  ops_ = 0;
  fault_at_ = 0;
  fired_ = false;
  powered_off_ = false;
  log_.clear();
  files_.clear();
}

void FaultInjectionFs::InjectAt(uint64_t n, Fault fault) {
  Reset();
  std::lock_guard<std::mutex> lock(mu_);
  fault_at_ = n;
  fault_ = fault;
}

void FaultInjectionFs::SetHook(std::function<void(uint64_t, const FileOp&)> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = std::move(hook);
}

uint64_t FaultInjectionFs::ops() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ops_;
}

std::vector<FileOp> FaultInjectionFs::log() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

bool FaultInjectionFs::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

bool FaultInjectionFs::Ignored(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return base == "LOG" || base.rfind("LOG.old", 0) == 0;
}

FaultInjectionFs::Action FaultInjectionFs::Before(FileOpKind kind, const std::string& path,
                                                  IOStatus* status) {
  if (Ignored(path)) return Action::kPass;
  uint64_t index = 0;
  std::function<void(uint64_t, const FileOp&)> hook;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (powered_off_) {
      *status = IOStatus::IOError("injected fault: the power is off", path);
      return Action::kFail;
    }
    index = ++ops_;
    log_.push_back({kind, path});
    hook = hook_;
  }
  if (hook) hook(index, FileOp{kind, path});
  std::lock_guard<std::mutex> lock(mu_);
  if (index != fault_at_) return Action::kPass;
  fired_ = true;
  const std::string what = std::string(FileOpKindName(kind)) + " " + path;
  switch (fault_) {
    case Fault::kIOError:
      *status = IOStatus::IOError("injected fault", what);
      return Action::kFail;
    case Fault::kNoSpace:
      *status = IOStatus::NoSpace("injected fault", what);
      return Action::kFail;
    case Fault::kShortWrite:
      if (kind == FileOpKind::kAppend) return Action::kShortWrite;
      *status = IOStatus::IOError("injected fault", what);
      return Action::kFail;
    case Fault::kPowerLoss:
      powered_off_ = true;
      *status = IOStatus::IOError("injected fault: the power is off", what);
      return Action::kFail;
  }
  return Action::kPass;
}

IOStatus FaultInjectionFs::Wrap(const std::string& fname, bool truncated,
                                std::unique_ptr<FSWritableFile>* result) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = files_.try_emplace(fname);
  if (truncated) {
    it->second = FileState();
  } else if (inserted) {
    // Reopened for appending: what is there already counts as durable.
    uint64_t size = 0;
    IOStatus s = target()->GetFileSize(fname, IOOptions(), &size, nullptr);
    if (!s.ok()) return s;
    it->second.size = it->second.synced = size;
  }
  *result = std::make_unique<File>(this, fname, std::move(*result));
  return IOStatus::OK();
}

IOStatus FaultInjectionFs::NewWritableFile(const std::string& fname,
                                           const rocksdb::FileOptions& options,
                                           std::unique_ptr<FSWritableFile>* result,
                                           IODebugContext* dbg) {
  if (Ignored(fname)) return target()->NewWritableFile(fname, options, result, dbg);
  IOStatus injected;
  if (Before(FileOpKind::kCreate, fname, &injected) == Action::kFail) return injected;
  IOStatus s = target()->NewWritableFile(fname, options, result, dbg);
  return s.ok() ? Wrap(fname, /*truncated=*/true, result) : s;
}

IOStatus FaultInjectionFs::ReopenWritableFile(const std::string& fname,
                                              const rocksdb::FileOptions& options,
                                              std::unique_ptr<FSWritableFile>* result,
                                              IODebugContext* dbg) {
  if (Ignored(fname)) return target()->ReopenWritableFile(fname, options, result, dbg);
  IOStatus injected;
  if (Before(FileOpKind::kCreate, fname, &injected) == Action::kFail) return injected;
  IOStatus s = target()->ReopenWritableFile(fname, options, result, dbg);
  return s.ok() ? Wrap(fname, /*truncated=*/false, result) : s;
}

IOStatus FaultInjectionFs::ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                             const rocksdb::FileOptions& options,
                                             std::unique_ptr<FSWritableFile>* result,
                                             IODebugContext* dbg) {
  IOStatus injected;
  if (Before(FileOpKind::kCreate, fname, &injected) == Action::kFail) return injected;
  IOStatus s = target()->ReuseWritableFile(fname, old_fname, options, result, dbg);
  if (!s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    files_.erase(old_fname);
  }
  return Wrap(fname, /*truncated=*/true, result);
}

IOStatus FaultInjectionFs::NewDirectory(const std::string& name, const IOOptions& options,
                                        std::unique_ptr<rocksdb::FSDirectory>* result,
                                        IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSDirectory> dir;
  IOStatus s = target()->NewDirectory(name, options, &dir, dbg);
  if (s.ok()) *result = std::make_unique<Directory>(this, name, std::move(dir));
  return s;
}

IOStatus FaultInjectionFs::RenameFile(const std::string& src, const std::string& target_name,
                                      const IOOptions& options, IODebugContext* dbg) {
  IOStatus injected;
  if (Before(FileOpKind::kRename, src, &injected) == Action::kFail) return injected;
  IOStatus s = target()->RenameFile(src, target_name, options, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(src);
    if (it != files_.end()) {
      files_[target_name] = it->second;
      files_.erase(src);
    } else {
      files_.erase(target_name);
    }
  }
  return s;
}

IOStatus FaultInjectionFs::DeleteFile(const std::string& fname, const IOOptions& options,
                                      IODebugContext* dbg) {
  IOStatus injected;
  if (Before(FileOpKind::kDelete, fname, &injected) == Action::kFail) return injected;
  IOStatus s = target()->DeleteFile(fname, options, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    files_.erase(fname);
  }
  return s;
}

IOStatus FaultInjectionFs::Truncate(const std::string& fname, size_t size, const IOOptions& options,
                                    IODebugContext* dbg) {
  IOStatus injected;
  if (Before(FileOpKind::kTruncate, fname, &injected) == Action::kFail) return injected;
  IOStatus s = target()->Truncate(fname, size, options, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(fname);
    if (it != files_.end()) {
      it->second.size = size;
      it->second.synced = std::min<uint64_t>(it->second.synced, size);
    }
  }
  return s;
}

IOStatus FaultInjectionFs::DropUnsyncedData() {
  std::map<std::string, FileState> files;
  {
    std::lock_guard<std::mutex> lock(mu_);
    files.swap(files_);
  }
  for (const auto& [path, state] : files) {
    if (::truncate(path.c_str(), static_cast<off_t>(state.synced)) != 0 && errno != ENOENT) {
      return IOStatus::IOError("cannot truncate " + path, std::strerror(errno));
    }
  }
  return IOStatus::OK();
}

namespace {

// A clock whose sleeps return at once.
class NoSleepClock : public rocksdb::SystemClockWrapper {
 public:
  NoSleepClock() : SystemClockWrapper(rocksdb::SystemClock::Default()) {}
  const char* Name() const override { return "NoSleepClock"; }
  void SleepForMicroseconds(int micros) override {}
};

// See NewFaultInjectionEnv. With own threads, jobs cannot be unscheduled;
// closing a database waits for its queued jobs instead.
class FaultInjectionEnv : public rocksdb::EnvWrapper {
 public:
  FaultInjectionEnv(const std::shared_ptr<FaultInjectionFs>& fs, bool own_threads)
      : EnvWrapper(rocksdb::NewCompositeEnv(fs)), own_threads_(own_threads) {
    file_system_ = fs;
    system_clock_ = std::make_shared<NoSleepClock>();
  }
  ~FaultInjectionEnv() override {
    for (std::unique_ptr<rocksdb::ThreadPool>& pool : pools_) {
      if (pool != nullptr) pool->JoinAllThreads();
    }
  }
  const char* Name() const override { return "FaultInjectionEnv"; }

  void SleepForMicroseconds(int micros) override {}

  void Schedule(void (*function)(void* arg), void* arg, Priority pri, void* tag,
                void (*unschedule)(void* arg)) override {
    if (!own_threads_) return EnvWrapper::Schedule(function, arg, pri, tag, unschedule);
    Pool(pri)->SubmitJob([function, arg] { function(arg); });
  }
  int UnSchedule(void* tag, Priority pri) override {
    return own_threads_ ? 0 : EnvWrapper::UnSchedule(tag, pri);
  }
  unsigned int GetThreadPoolQueueLen(Priority pri) const override {
    if (!own_threads_) return EnvWrapper::GetThreadPoolQueueLen(pri);
    std::lock_guard<std::mutex> lock(mu_);
    return pools_[pri] == nullptr ? 0 : pools_[pri]->GetQueueLen();
  }
  void SetBackgroundThreads(int number, Priority pri) override {
    if (!own_threads_) return EnvWrapper::SetBackgroundThreads(number, pri);
    Pool(pri)->SetBackgroundThreads(number);
  }
  int GetBackgroundThreads(Priority pri) override {
    if (!own_threads_) return EnvWrapper::GetBackgroundThreads(pri);
    return Pool(pri)->GetBackgroundThreads();
  }
  void IncBackgroundThreadsIfNeeded(int number, Priority pri) override {
    if (!own_threads_) return EnvWrapper::IncBackgroundThreadsIfNeeded(number, pri);
    rocksdb::ThreadPool* pool = Pool(pri);
    if (pool->GetBackgroundThreads() < number) pool->SetBackgroundThreads(number);
  }

 private:
  rocksdb::ThreadPool* Pool(Priority pri) {
    std::lock_guard<std::mutex> lock(mu_);
    std::unique_ptr<rocksdb::ThreadPool>& pool = pools_[pri];
    if (pool == nullptr) pool.reset(rocksdb::NewThreadPool(1));
    return pool.get();
  }

  const bool own_threads_;
  mutable std::mutex mu_;
  std::unique_ptr<rocksdb::ThreadPool> pools_[Priority::TOTAL];
};

}  // namespace

std::shared_ptr<rocksdb::Env> NewFaultInjectionEnv(const std::shared_ptr<FaultInjectionFs>& fs,
                                                   bool own_threads) {
  return std::make_shared<FaultInjectionEnv>(fs, own_threads);
}

}  // namespace tandem
