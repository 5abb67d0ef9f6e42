// Checkpoint store benchmarks, each against a baseline measured in the same
// run on the same disk:
//   1. save throughput vs a raw sequential write (+ fdatasync) of the same bytes;
//      restore throughput vs a raw read of them;
//   2. training stall per checkpoint, async vs synchronous save, the async
//      save either copying the state before it returns (Submit) or while the
//      next step computes (Begin, as the trainer does);
//   3. bytes written, and bytes replicated to a second store over gRPC with
//      mutual TLS on loopback, for an incremental checkpoint vs a full one.
// The state is synthetic: --mib MiB of random fp32 in 16 MiB tensors.
// Prints a Markdown table.
// Usage: checkpoint_bench [--mib N] [--dir DIR] [--repeats N] [--save-only]
//   --save-only measures the save and restore throughput only (for profiling).
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "checkpoint/allocator.h"
#include "checkpoint/async_saver.h"
#include "checkpoint/checkpoint_store.h"
#include "checkpoint/replication.h"
#include "transport/tls.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

// CPU seconds this process has used, all threads, user and system.
double CpuSeconds() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
         1e-6 * (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

// The 1-minute load average: the machine's cores may be shared.
double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double load = 0;
  in >> load;
  return load;
}

void PrintLoad(double load_before) {
  std::printf("\nload average (1 min) at start %.2f, at end %.2f, on %ld cores\n", load_before,
              LoadAverage(), sysconf(_SC_NPROCESSORS_ONLN));
}

// Bytes this process has caused to be written to the storage layer.
uint64_t WriteBytes() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value) {
    if (key == "write_bytes:") return value;
  }
  return 0;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<StoredTensor> MakeState(size_t mib, uint32_t seed) {
  constexpr size_t kTensorBytes = 16 << 20;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<StoredTensor> state;
  for (size_t done = 0, i = 0; done < mib << 20; done += kTensorBytes, ++i) {
    StoredTensor t;
    t.name = "model.layer" + std::to_string(i) + ".weight";
    t.dtype = v1::DTYPE_FLOAT32;
    t.shape = {static_cast<int64_t>(kTensorBytes / sizeof(float))};
    t.bytes.resize(kTensorBytes);
    auto* f = reinterpret_cast<float*>(t.bytes.data());
    for (size_t k = 0; k < kTensorBytes / sizeof(float); ++k) f[k] = normal(rng);
    state.push_back(std::move(t));
  }
  return state;
}

std::vector<TensorView> Views(const std::vector<StoredTensor>& state) {
  std::vector<TensorView> views;
  for (const StoredTensor& t : state) {
    views.push_back({t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  }
  return views;
}

v1::CheckpointManifest Manifest(uint64_t step) {
  v1::CheckpointManifest m;
  m.set_job("bench");
  m.set_step(step);
  return m;
}

double RawWrite(const std::string& path, const std::vector<StoredTensor>& state) {
  const Clock::time_point start = Clock::now();
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (const StoredTensor& t : state) {
    size_t done = 0;
    while (done < t.bytes.size()) {
      const ssize_t n = write(fd, t.bytes.data() + done, t.bytes.size() - done);
      if (n <= 0) std::exit(1);
      done += static_cast<size_t>(n);
    }
  }
  fdatasync(fd);
  close(fd);
  return Since(start);
}

double RawRead(const std::string& path, size_t bytes) {
  std::string buffer(bytes, '\0');
  const Clock::time_point start = Clock::now();
  const int fd = open(path.c_str(), O_RDONLY);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = read(fd, buffer.data() + done, bytes - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  close(fd);
  return Since(start);
}

// A training step's worth of arithmetic, ~`seconds` long on this machine.
void Compute(std::vector<float>& work, double seconds) {
  const Clock::time_point start = Clock::now();
  while (Since(start) < seconds) {
    for (float& x : work) x = x * 0.999f + 0.001f;
  }
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  using namespace tandem;
  // As tandem's main does, for the processes that save checkpoints.
  if (!KeepFreedMemoryForCheckpoints()) std::fprintf(stderr, "malloc settings refused\n");
  size_t mib = 128;
  std::string root = "/tmp";
  int repeats = 7;
  bool save_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--mib" && has_value) {
      mib = std::strtoul(argv[++i], nullptr, 10);
    } else if (arg == "--dir" && has_value) {
      root = argv[++i];
    } else if (arg == "--repeats" && has_value) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--save-only") {
      save_only = true;
    } else {
      std::fprintf(arg == "--help" ? stdout : stderr,
                   "usage: checkpoint_bench [--mib N] [--dir DIR] [--repeats N] [--save-only]\n"
                   "  --mib N      size of the synthetic state (default 128)\n"
                   "  --dir DIR    where the stores and the raw file go (default /tmp)\n"
                   "  --repeats N  save/restore repeats, the median is reported (default 7)\n"
                   "  --save-only  measure the save and restore throughput only\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  std::string pattern = root + "/tandem-ckpt-bench-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string dir = pattern;
  const std::vector<StoredTensor> state = MakeState(mib, 1);
  const size_t bytes = mib << 20;
  const double mb = bytes / 1e6;
  const double load_before = LoadAverage();

  // 1. Save and restore throughput.
  std::vector<double> raw_write, save, raw_read, restore, raw_write_cpu, save_cpu;
  for (int r = 0; r < repeats; ++r) {
    double cpu = CpuSeconds();
    raw_write.push_back(RawWrite(dir + "/raw.bin", state));
    raw_write_cpu.push_back(CpuSeconds() - cpu);
    raw_read.push_back(RawRead(dir + "/raw.bin", bytes));
    std::filesystem::remove(dir + "/raw.bin");
    const std::string store_dir = dir + "/store" + std::to_string(r);
    auto store = CheckpointStore::Open(store_dir);
    Check(store.status(), "open");
    cpu = CpuSeconds();
    Clock::time_point start = Clock::now();
    Check((*store)->Save(Manifest(1), Views(state), 0).status(), "save");
    save.push_back(Since(start));
    save_cpu.push_back(CpuSeconds() - cpu);
    start = Clock::now();
    auto loaded = (*store)->Load("bench");
    Check(loaded.status(), "load");
    restore.push_back(Since(start));
    store->reset();
    std::filesystem::remove_all(store_dir);
  }
  const double raw_write_mbs = mb / Median(raw_write);
  const double save_mbs = mb / Median(save);
  const double raw_read_mbs = mb / Median(raw_read);
  const double restore_mbs = mb / Median(restore);

  auto print_throughput = [&] {
    std::printf("| measurement (%zu MiB state, median of %d) | tandem | baseline | ratio |\n", mib,
                repeats);
    std::printf("| --- | --- | --- | --- |\n");
    std::printf("| save throughput vs raw write+fdatasync | %.0f MB/s | %.0f MB/s | %.2f |\n",
                save_mbs, raw_write_mbs, save_mbs / raw_write_mbs);
    std::printf(
        "| save CPU time, all threads, vs raw write+fdatasync | %.0f ms | %.0f ms | %.2f |\n",
        1000 * Median(save_cpu), 1000 * Median(raw_write_cpu),
        Median(save_cpu) / Median(raw_write_cpu));
    std::printf(
        "| restore throughput (verified) vs raw read (page cache) | %.0f MB/s | %.0f MB/s | "
        "%.2f |\n",
        restore_mbs, raw_read_mbs, restore_mbs / raw_read_mbs);
  };
  if (save_only) {
    std::filesystem::remove_all(dir);
    print_throughput();
    PrintLoad(load_before);
    return 0;
  }

  // 2. Stall per checkpoint: a loop of steps (0.25 s of compute that reads
  // the state, then an update that changes it), checkpointing every 4th; the
  // stall is the time the training thread spends in the checkpoint, and with
  // Begin also the time it waits for the copy before the next update.
  std::vector<float> work(1 << 20, 1.0f);
  enum Mode { kSync = 0, kSubmit = 1, kBegin = 2 };
  double stall[3] = {0, 0, 0};
  int checkpoints = 0;
  for (int mode = kSync; mode <= kBegin; ++mode) {
    const std::string store_dir = dir + "/stall" + std::to_string(mode);
    auto store = CheckpointStore::Open(store_dir);
    Check(store.status(), "open");
    std::vector<StoredTensor> live = MakeState(mib, 2);
    AsyncSaver saver(store->get());
    if (mode != kSync) saver.Reserve(Views(live));  // as the trainer does when it starts
    checkpoints = 0;
    bool copying = false;
    for (int step = 1; step <= 16; ++step) {
      Compute(work, 0.25);
      if (copying) {
        const Clock::time_point start = Clock::now();
        saver.WaitCopied();
        stall[mode] += Since(start);
        copying = false;
      }
      reinterpret_cast<float*>(live[0].bytes.data())[0] += 1;  // the state moves on
      if (step % 4 != 0) continue;
      const Clock::time_point start = Clock::now();
      if (mode == kSubmit) {
        saver.Submit(Manifest(step), Views(live), 2);
      } else if (mode == kBegin) {
        saver.Begin(Manifest(step), Views(live), 2);
        copying = true;
      } else {
        Check((*store)->Save(Manifest(step), Views(live), 2).status(), "save");
      }
      stall[mode] += Since(start);
      ++checkpoints;
    }
    saver.WaitCopied();
    saver.Wait();
    for (const AsyncSaver::Finished& f : saver.TakeFinished()) {
      Check(f.manifest.status(), "async save");
    }
  }

  // 3. Incremental: one float of the state changes between two checkpoints;
  // each is saved, then pushed to a second store served over mutual TLS.
  uint64_t full_written = 0;
  uint64_t incremental_written = 0;
  uint64_t full_sent = 0;
  uint64_t incremental_sent = 0;
  {
    Check(CreateCertificates(dir + "/certs", {"127.0.0.1"}), "certs");
    auto server_creds = ServerCredentials(dir + "/certs");
    auto channel_creds = ChannelCredentials(dir + "/certs");
    Check(server_creds.status(), "server credentials");
    Check(channel_creds.status(), "channel credentials");
    auto target = CheckpointStore::Open(dir + "/replica");
    Check(target.status(), "open replica");
    ReplicationService service(**target);
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", *server_creds, &port);
    builder.SetMaxReceiveMessageSize(kReplicationMaxMessageBytes);
    builder.RegisterService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    const std::string address = "127.0.0.1:" + std::to_string(port);

    // Each save is measured from before it to after its store is closed, so
    // the bytes its memtable flush writes later are counted too.
    std::vector<StoredTensor> live = state;
    auto measured_save = [&](uint64_t step) {
      const uint64_t before = WriteBytes();
      auto store = CheckpointStore::Open(dir + "/incremental");
      Check(store.status(), "open");
      Check((*store)->Save(Manifest(step), Views(live), 0).status(), "save");
      store->reset();
      return WriteBytes() - before;
    };
    full_written = measured_save(1);
    reinterpret_cast<float*>(live[0].bytes.data())[7] += 1;
    incremental_written = measured_save(2);

    CheckpointStoreOptions read_only;
    read_only.read_only = true;
    auto store = CheckpointStore::Open(dir + "/incremental", read_only);
    Check(store.status(), "open");
    auto pushed =
        PushCheckpoint(**store, "bench", 1, address, *channel_creds, std::chrono::minutes(5), 0);
    Check(pushed.status(), "push");
    full_sent = pushed->bytes_sent;
    pushed =
        PushCheckpoint(**store, "bench", 2, address, *channel_creds, std::chrono::minutes(5), 0);
    Check(pushed.status(), "push");
    incremental_sent = pushed->bytes_sent;
    server->Shutdown();
  }
  std::filesystem::remove_all(dir);

  print_throughput();
  std::printf(
      "| training stall per checkpoint, async (copy before returning) vs sync | %.1f ms | %.1f "
      "ms | %.3f |\n",
      1000 * stall[kSubmit] / checkpoints, 1000 * stall[kSync] / checkpoints,
      stall[kSubmit] / stall[kSync]);
  std::printf(
      "| training stall per checkpoint, async (copy under the next step's compute) vs sync | "
      "%.2f ms | %.1f ms | %.4f |\n",
      1000 * stall[kBegin] / checkpoints, 1000 * stall[kSync] / checkpoints,
      stall[kBegin] / stall[kSync]);
  std::printf(
      "| bytes written, incremental (1 float changed) vs full | %.1f MB | %.1f MB | %.3f |\n",
      incremental_written / 1e6, full_written / 1e6,
      static_cast<double>(incremental_written) / full_written);
  std::printf("| bytes replicated over TLS, incremental vs full | %.1f MB | %.1f MB | %.3f |\n",
              incremental_sent / 1e6, full_sent / 1e6,
              static_cast<double>(incremental_sent) / full_sent);
  PrintLoad(load_before);
  return 0;
}
