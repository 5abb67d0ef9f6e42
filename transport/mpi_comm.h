// PoolComm: the collectives inside one pool (one cloud), over Open MPI.
//
// Every call is collective: all ranks of the communicator make it in the same
// order. Errors are returned, never aborted on: the communicator is set to
// MPI_ERRORS_RETURN and MPI's error string becomes an absl::Status. Not
// thread-safe; one thread per rank drives it (MPI is initialised with
// MPI_THREAD_FUNNELED).
#ifndef TANDEM_TRANSPORT_MPI_COMM_H_
#define TANDEM_TRANSPORT_MPI_COMM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tandem {

// Initialises MPI for the lifetime of the object (MPI_Init_thread /
// MPI_Finalize). Create exactly one, first thing in a worker's main.
class MpiSession {
 public:
  static absl::StatusOr<std::unique_ptr<MpiSession>> Start(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  MpiSession() = default;
};

class PoolComm {
 public:
  // Gradients are reduced in buckets of this many floats, so a huge model
  // never needs one giant MPI message (and its pinned buffers).
  static constexpr size_t kBucketFloats = size_t{4} << 20;

  // The communicator of every rank mpirun started (MPI_COMM_WORLD).
  static PoolComm World();

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Elementwise sum over ranks, in place, in buckets of kBucketFloats.
  absl::Status AllreduceSum(float* data, size_t count);
  absl::Status AllreduceSum(double* data, size_t count);
  // Copies `bytes` bytes from rank `root` into every other rank's `data`.
  absl::Status Broadcast(void* data, size_t bytes, int root);
  // Gathers `bytes` bytes from every rank into `out` (size() * bytes), on every rank.
  absl::Status AllGather(const void* data, size_t bytes, void* out);
  absl::Status Barrier();

 private:
  PoolComm(int rank, int size) : rank_(rank), size_(size) {}

  int rank_;
  int size_;
};

}  // namespace tandem

#endif  // TANDEM_TRANSPORT_MPI_COMM_H_
