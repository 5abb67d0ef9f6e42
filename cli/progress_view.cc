#include "cli/progress_view.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace tandem::cli {

ProgressView::ProgressView(std::ostream& out, bool terminal, bool quiet, uint32_t global_batch)
    : out_(out), terminal_(terminal), quiet_(quiet), global_batch_(global_batch) {}

std::string ProgressView::FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

void ProgressView::Print(const std::string& line) {
  if (line_drawn_) out_ << "\r\033[K";
  out_ << line << "\n";
  line_drawn_ = false;
  if (terminal_) DrawLine();
  out_.flush();
}

void ProgressView::DrawLine() {
  if (total_steps_ == 0) return;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * step_ / total_steps_);
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::string line = absl::StrFormat("step %d/%d [%s] loss %.4f", step_, total_steps_, bar, loss_);
  if (test_accuracy_ >= 0) line += absl::StrFormat(" | test acc %.4f", test_accuracy_);
  if (samples_per_s_ > 0) {
    const double eta = (total_steps_ - step_) * static_cast<double>(global_batch_) / samples_per_s_;
    line += absl::StrFormat(" | %.0f samples/s", samples_per_s_);
    if (wan_mb_per_s_ >= 0) line += absl::StrFormat(" | WAN %.2f MB/s", wan_mb_per_s_);
    line += absl::StrFormat(" | ETA %s", FormatDuration(eta));
  }
  out_ << "\r\033[K" << line << std::flush;
  line_drawn_ = true;
}

void ProgressView::OnEvent(const WorkerEvent& event) {
  const v1::TrainingProgress& p = event.progress;
  if (event.kind == "warning") {
    Print("warning: " + event.message);
  } else if (event.kind == "start") {
    total_steps_ = p.total_steps();
    step_ = p.step();
    next_log_step_ = step_;
    if (!quiet_ && step_ > 0) {
      Print(absl::StrFormat("resuming at step %d of %d", step_, total_steps_));
    }
  } else if (event.kind == "progress") {
    step_ = p.step();
    total_steps_ = p.total_steps();
    loss_ = p.loss();
    samples_per_s_ = p.samples_per_s();
    const auto now = std::chrono::steady_clock::now();
    if (p.wan_bytes_sent() > 0 && wan_bytes_ > 0) {
      const double seconds = std::chrono::duration<double>(now - wan_time_).count();
      if (seconds > 0) wan_mb_per_s_ = (p.wan_bytes_sent() - wan_bytes_) / 1e6 / seconds;
    }
    wan_bytes_ = p.wan_bytes_sent();
    wan_time_ = now;
    if (terminal_) {
      DrawLine();
    } else if (!quiet_ && step_ >= next_log_step_) {
      std::string line = absl::StrFormat("step %d/%d loss %.4f %.0f samples/s", step_, total_steps_,
                                         loss_, samples_per_s_);
      if (wan_mb_per_s_ >= 0) line += absl::StrFormat(", WAN %.2f MB/s", wan_mb_per_s_);
      Print(line);
      next_log_step_ = step_ + std::max<uint64_t>(1, total_steps_ / 10);
    }
  } else if (event.kind == "eval") {
    test_accuracy_ = p.test_accuracy();
    if (!quiet_ && !terminal_) {
      Print(absl::StrFormat("step %d: test accuracy %.4f, test loss %.4f", p.step(),
                            p.test_accuracy(), p.test_loss()));
    } else if (terminal_) {
      DrawLine();
    }
  }
}

void ProgressView::Finish() {
  if (line_drawn_) out_ << "\n" << std::flush;
  line_drawn_ = false;
}

}  // namespace tandem::cli
