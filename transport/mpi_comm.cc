#include "transport/mpi_comm.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <memory>

#include "absl/strings/str_format.h"

namespace tandem {
namespace {

absl::Status FromMpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return absl::InternalError(absl::StrFormat("%s failed: %s (a rank of the pool may have died)",
                                             what, std::string(text, length)));
}

// MPI counts are ints; larger buffers go in pieces.
constexpr size_t kMaxPiece = INT_MAX / 2;

}  // namespace

absl::StatusOr<std::unique_ptr<MpiSession>> MpiSession::Start(int* argc, char*** argv) {
  int provided = 0;
  int code = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  if (code != MPI_SUCCESS) return FromMpi(code, "MPI_Init_thread");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return std::unique_ptr<MpiSession>(new MpiSession());
}

MpiSession::~MpiSession() { MPI_Finalize(); }

PoolComm PoolComm::World() {
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return PoolComm(rank, size);
}

absl::Status PoolComm::AllreduceSum(float* data, size_t count) {
  for (size_t offset = 0; offset < count; offset += kBucketFloats) {
    const int n = static_cast<int>(std::min(kBucketFloats, count - offset));
    absl::Status status =
        FromMpi(MPI_Allreduce(MPI_IN_PLACE, data + offset, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status PoolComm::AllreduceSum(double* data, size_t count) {
  for (size_t offset = 0; offset < count; offset += kBucketFloats) {
    const int n = static_cast<int>(std::min(kBucketFloats, count - offset));
    absl::Status status =
        FromMpi(MPI_Allreduce(MPI_IN_PLACE, data + offset, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status PoolComm::Broadcast(void* data, size_t bytes, int root) {
  auto* p = static_cast<char*>(data);
  for (size_t offset = 0; offset < bytes; offset += kMaxPiece) {
    const int n = static_cast<int>(std::min(kMaxPiece, bytes - offset));
    absl::Status status =
        FromMpi(MPI_Bcast(p + offset, n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status PoolComm::AllGather(const void* data, size_t bytes, void* out) {
  if (bytes > kMaxPiece) return absl::InvalidArgumentError("AllGather of more than 1 GiB per rank");
  const int n = static_cast<int>(bytes);
  return FromMpi(MPI_Allgather(data, n, MPI_BYTE, out, n, MPI_BYTE, MPI_COMM_WORLD),
                 "MPI_Allgather");
}

absl::Status PoolComm::Barrier() { return FromMpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

}  // namespace tandem
