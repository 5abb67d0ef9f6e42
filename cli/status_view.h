// How the commands that talk to the coordinator show jobs: state names as
// users read them ("RUNNING", not enum numbers), the JSON objects of
// `--output json`, the text of `tandem status` and `tandem list`, and
// WatchView, the live view of `tandem status JOB --watch`.
#ifndef TANDEM_CLI_STATUS_VIEW_H_
#define TANDEM_CLI_STATUS_VIEW_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "tandem/v1/coordinator.pb.h"
#include "tandem/v1/job.pb.h"

namespace tandem::cli {

// "RUNNING", "ACTIVE": the enum name without its prefix.
std::string JobStateName(v1::JobState state);
std::string PoolStateName(v1::PoolState state);
// SUCCEEDED, FAILED or CANCELLED.
bool IsTerminal(v1::JobState state);

// "2024-05-01T12:00:00Z".
std::string IsoTime(int64_t unix_ms);
// "1.5 MiB".
std::string HumanBytes(uint64_t bytes);
int64_t NowUnixMs();

// The whole status of a job: job, state, progress, generation, restarts,
// recovery times, pools and events (see `tandem status --help`). Unknown
// test accuracy is null.
nlohmann::json JobJson(const v1::JobStatus& job);
// The short form of `tandem list`: job, state, step, total_steps,
// test_accuracy, submitted_unix_ms, age_s.
nlohmann::json JobSummaryJson(const v1::JobStatus& job);
nlohmann::json PoolHealthJson(const v1::PoolHealth& pool);

// `tandem status JOB` as text.
void PrintJob(std::ostream& out, const v1::JobStatus& job);
// One line per job under a header (`tandem list`, `tandem status`).
void PrintJobTable(std::ostream& out, const std::vector<v1::JobStatus>& jobs);
// One line per cloud under a header.
void PrintPoolTable(std::ostream& out, const std::vector<v1::PoolHealth>& pools);

// The live view of `status --watch`. Update() takes each GetJob answer; on a
// terminal it redraws a block of lines in place (a progress bar, loss, test
// accuracy, samples/s, WAN MB/s from the growth of wan_bytes_sent over the
// last few seconds (timed by the job's own wall_s when it reports one, else
// by this process's clock), compression ratio, ETA, the state and its latest reason, one line
// per pool); otherwise it prints a line for each new event and a progress
// line every twentieth of the run. With json, one JobJson object per line
// whenever the step, the state or the events change. Not thread-safe.
class WatchView {
 public:
  WatchView(std::ostream& out, bool terminal, bool json);
  ~WatchView();

  void Update(const v1::JobStatus& job);
  // Leaves the cursor below the block; idempotent.
  void Finish();

 private:
  struct Sample {
    std::chrono::steady_clock::time_point at;
    double wall_s;  // the job's TrainingProgress.wall_s then
    uint64_t bytes;
  };
  struct Rate {
    std::deque<Sample> samples;
    double mb_per_s = -1;
  };
  std::vector<std::string> Render(const v1::JobStatus& job, const Rate& rate) const;
  void UpdateRate(const v1::JobStatus& job, Rate& rate);

  std::ostream& out_;
  bool terminal_;
  bool json_;
  int lines_drawn_ = 0;
  bool cursor_hidden_ = false;
  Rate rate_;
  // What the log and json forms printed last.
  int events_shown_ = 0;
  uint64_t next_step_ = 0;
  std::string last_json_key_;
};

}  // namespace tandem::cli

#endif  // TANDEM_CLI_STATUS_VIEW_H_
