// ProgressView: what `tandem train` shows while a job runs. On a terminal, one
// live line (step/total, a bar, loss, samples/s, WAN MB/s when pools exchange
// gradients, ETA) redrawn in place; in a
// log (not a terminal), a line every tenth of the run and at each evaluation,
// unless quiet. Warnings always show. Writes to the stream it is given.
#ifndef TANDEM_CLI_PROGRESS_VIEW_H_
#define TANDEM_CLI_PROGRESS_VIEW_H_

#include <chrono>
#include <cstdint>
#include <ostream>

#include "coordinator/local_train.h"

namespace tandem::cli {

class ProgressView {
 public:
  ProgressView(std::ostream& out, bool terminal, bool quiet, uint32_t global_batch);

  void OnEvent(const WorkerEvent& event);
  // Ends the live line, if one is drawn.
  void Finish();

  // "1m05s", "42s": how an ETA reads.
  static std::string FormatDuration(double seconds);

 private:
  void DrawLine();
  void Print(const std::string& line);

  std::ostream& out_;
  bool terminal_;
  bool quiet_;
  uint32_t global_batch_;
  bool line_drawn_ = false;
  uint64_t step_ = 0;
  uint64_t total_steps_ = 0;
  double loss_ = 0;
  double samples_per_s_ = 0;
  double test_accuracy_ = -1;
  // WAN bytes sent and when, at the previous progress event, for MB/s.
  uint64_t wan_bytes_ = 0;
  std::chrono::steady_clock::time_point wan_time_;
  double wan_mb_per_s_ = -1;
  uint64_t next_log_step_ = 0;
};

}  // namespace tandem::cli

#endif  // TANDEM_CLI_PROGRESS_VIEW_H_
