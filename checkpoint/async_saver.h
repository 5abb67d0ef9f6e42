// AsyncSaver: writes checkpoints on a background thread so that training
// blocks at most for the host copy of its state, and with Begin not even for
// that: the copy runs on the saver's threads while the caller does work that
// leaves the state alone (a step's forward and backward pass), and the caller
// waits for it only before it changes the state.
//
// At most one save is in flight: Submit and Begin wait for the previous save
// to finish. The state is copied into staging buffers that the saver keeps
// from one save to the next (so later copies touch no fresh pages). A save that fails leaves the
// store's previous checkpoint valid (the store commits atomically) and is reported through
// TakeFinished; it never stops the caller. Submit, Wait and TakeFinished are called from one thread
// (the training loop); the destructor waits for the save in flight. The store must outlive the
// saver.
#ifndef TANDEM_CHECKPOINT_ASYNC_SAVER_H_
#define TANDEM_CHECKPOINT_ASYNC_SAVER_H_

#include <cstdint>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/checkpoint_store.h"

namespace tandem {

class AsyncSaver {
 public:
  struct Finished {
    uint64_t step = 0;
    absl::StatusOr<v1::CheckpointManifest> manifest;  // the committed manifest, or why not
    double save_seconds = 0;                          // hashing + writing, off the training thread
  };

  explicit AsyncSaver(CheckpointStore* store);
  ~AsyncSaver();
  AsyncSaver(const AsyncSaver&) = delete;
  AsyncSaver& operator=(const AsyncSaver&) = delete;

  // Copies `tensors` and queues their save; the caller's state may change as
  // soon as this returns. Blocks while a previous save is still running.
  void Submit(v1::CheckpointManifest manifest, const std::vector<TensorView>& tensors,
              uint32_t keep);

  // Queues the save of `tensors`, copied on the saver's threads; returns as
  // soon as a previous save has finished. The memory `tensors` point to must
  // stay unchanged and alive until WaitCopied returns.
  void Begin(v1::CheckpointManifest manifest, const std::vector<TensorView>& tensors,
             uint32_t keep);

  // Blocks until the state given to the last Begin is copied (at once if it
  // is, or if there was none).
  void WaitCopied();

  // Sizes the staging buffers for a state shaped like `tensors` and touches
  // their pages, so that the first Submit copies into warm memory instead of
  // faulting in a fresh copy of the whole state while training waits. Call it
  // once, before training starts; blocks while a save is in flight.
  void Reserve(const std::vector<TensorView>& tensors);

  // Blocks until no save is in flight.
  void Wait();

  // Saves that finished since the last call, oldest first.
  std::vector<Finished> TakeFinished();

 private:
  struct Job {
    v1::CheckpointManifest manifest;
    uint32_t keep;
    std::vector<TensorView> source;  // the caller's state, to be copied
  };

  void Loop();
  // staging_ = the bytes of `source`, split by bytes over kCopyThreads threads.
  void CopyIntoStaging(const std::vector<TensorView>& source);

  CheckpointStore* store_;
  absl::Mutex mu_;
  std::optional<Job> pending_ ABSL_GUARDED_BY(mu_);
  // The copied state of the pending or running save. Written by Submit only
  // while no save is pending or running, read by the saver thread otherwise.
  std::vector<StoredTensor> staging_;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool copying_ ABSL_GUARDED_BY(mu_) = false;  // a Begin's state is not copied yet
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Finished> finished_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_ASYNC_SAVER_H_
