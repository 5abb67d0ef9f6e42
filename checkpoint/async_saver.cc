#include "checkpoint/async_saver.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace tandem {
namespace {

// The state is copied on this many threads (the saver's and helpers), each
// copying at least kMinBytesPerCopyThread.
constexpr size_t kCopyThreads = 2;
constexpr size_t kMinBytesPerCopyThread = 1 << 20;

}  // namespace

AsyncSaver::AsyncSaver(CheckpointStore* store) : store_(store), thread_([this] { Loop(); }) {}

AsyncSaver::~AsyncSaver() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void AsyncSaver::Submit(v1::CheckpointManifest manifest, const std::vector<TensorView>& tensors,
                        uint32_t keep) {
  Begin(std::move(manifest), tensors, keep);
  WaitCopied();
}

void AsyncSaver::Begin(v1::CheckpointManifest manifest, const std::vector<TensorView>& tensors,
                       uint32_t keep) {
  Wait();
  absl::MutexLock lock(&mu_);
  pending_ = Job{std::move(manifest), keep, tensors};
  copying_ = true;
}

void AsyncSaver::WaitCopied() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](AsyncSaver* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) { return !s->copying_; }, this));
}

void AsyncSaver::CopyIntoStaging(const std::vector<TensorView>& tensors) {
  staging_.resize(tensors.size());
  struct Span {
    char* to;
    const char* from;
    size_t bytes;
  };
  std::vector<Span> spans;
  size_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& view = tensors[i];
    StoredTensor& copy = staging_[i];
    copy.name = view.name;
    copy.dtype = view.dtype;
    copy.shape = view.shape;
    copy.bytes.resize(view.bytes);
    if (view.bytes == 0) continue;
    spans.push_back({copy.bytes.data(), static_cast<const char*>(view.data), view.bytes});
    total += view.bytes;
  }
  // Split by bytes, not by tensor: one tensor may hold most of the state.
  auto copy_range = [&spans](size_t begin, size_t end) {
    size_t offset = 0;
    for (const Span& s : spans) {
      const size_t from = std::max(begin, offset);
      const size_t to = std::min(end, offset + s.bytes);
      if (from < to) std::memcpy(s.to + (from - offset), s.from + (from - offset), to - from);
      offset += s.bytes;
      if (offset >= end) break;
    }
  };
  const size_t threads = total >= kMinBytesPerCopyThread * 2 ? kCopyThreads : 1;
  std::vector<std::thread> helpers;
  for (size_t t = 1; t < threads; ++t) {
    helpers.emplace_back(copy_range, total * t / threads, total * (t + 1) / threads);
  }
  copy_range(0, total / threads);
  for (std::thread& h : helpers) h.join();
}

void AsyncSaver::Reserve(const std::vector<TensorView>& tensors) {
  Wait();
  staging_.resize(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    // resize() value-initialises the bytes, which writes every page once.
    staging_[i].bytes.resize(tensors[i].bytes);
  }
}

void AsyncSaver::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](AsyncSaver* s)
           ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) { return !s->busy_ && !s->pending_.has_value(); },
      this));
}

std::vector<AsyncSaver::Finished> AsyncSaver::TakeFinished() {
  absl::MutexLock lock(&mu_);
  std::vector<Finished> out;
  out.swap(finished_);
  return out;
}

void AsyncSaver::Loop() {
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](AsyncSaver* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
            return s->stop_ || s->pending_.has_value();
          },
          this));
      if (!pending_.has_value()) return;  // stopping, nothing left to write
      job = std::move(*pending_);
      pending_.reset();
      busy_ = true;
    }
    // No save is pending or running but this one, so nobody else touches
    // staging_; the caller leaves the source alone until copying_ clears.
    CopyIntoStaging(job.source);
    job.source.clear();
    {
      absl::MutexLock lock(&mu_);
      copying_ = false;
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<TensorView> views;
    views.reserve(staging_.size());
    for (const StoredTensor& t : staging_) {
      views.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
    }
    const uint64_t step = job.manifest.step();
    absl::StatusOr<v1::CheckpointManifest> saved =
        store_->Save(std::move(job.manifest), views, job.keep);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    absl::MutexLock lock(&mu_);
    finished_.push_back({step, std::move(saved), seconds});
    busy_ = false;
  }
}

}  // namespace tandem
