#include "cli/status_view.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/progress_view.h"

namespace tandem::cli {

namespace {

std::string StripPrefix(const std::string& name, const std::string& prefix) {
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

nlohmann::json Accuracy(double accuracy) {
  return accuracy >= 0 ? nlohmann::json(accuracy) : nlohmann::json(nullptr);
}

std::string Age(int64_t since_unix_ms) {
  if (since_unix_ms <= 0) return "-";
  return ProgressView::FormatDuration(std::max<int64_t>(0, NowUnixMs() - since_unix_ms) / 1000.0);
}

std::string ClockTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char text[16];
  std::strftime(text, sizeof(text), "%H:%M:%S", &tm);
  return text;
}

std::string StepText(const v1::TrainingProgress& p) {
  if (p.total_steps() == 0) return absl::StrFormat("%d", p.step());
  return absl::StrFormat("%d/%d", p.step(), p.total_steps());
}

// "RUNNING -> RECOVERING (cloud-b) at step 40: lease expired"; the first
// event, from no state, shows only the state it entered.
std::string EventText(const v1::JobEvent& e) {
  std::string text = e.from() == v1::JOB_STATE_UNSPECIFIED
                         ? JobStateName(e.to())
                         : JobStateName(e.from()) + " -> " + JobStateName(e.to());
  if (!e.cloud().empty()) text += " (" + e.cloud() + ")";
  if (e.step() > 0) text += absl::StrFormat(" at step %d", e.step());
  if (!e.reason().empty()) text += ": " + e.reason();
  return text;
}

std::string LatestReason(const v1::JobStatus& job) {
  for (int i = job.events_size() - 1; i >= 0; --i) {
    if (!job.events(i).reason().empty()) return job.events(i).reason();
  }
  return "";
}

std::string PoolLine(const v1::PoolStatus& p) {
  std::string line = absl::StrFormat("  pool %d  %-12s %3d workers  %-8s step %d", p.index(),
                                     p.cloud(), p.workers(), PoolStateName(p.state()), p.step());
  if (!p.error().empty()) line += "  " + p.error();
  // Alive peers its leader waits for (slow, not lost).
  if (!p.waiting_for().empty()) line += "  waiting for " + p.waiting_for();
  return line;
}

int TerminalWidth() {
  winsize size{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 120;
}

}  // namespace

std::string JobStateName(v1::JobState state) {
  return StripPrefix(v1::JobState_Name(state), "JOB_STATE_");
}

std::string PoolStateName(v1::PoolState state) {
  return StripPrefix(v1::PoolState_Name(state), "POOL_STATE_");
}

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

std::string IsoTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::string HumanBytes(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 30)) return absl::StrFormat("%.1f GiB", bytes / double(1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
  if (bytes >= 1024) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  return absl::StrFormat("%d B", bytes);
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

nlohmann::json JobJson(const v1::JobStatus& job) {
  const v1::TrainingProgress& p = job.progress();
  nlohmann::json pools = nlohmann::json::array();
  for (const v1::PoolStatus& pool : job.pools()) {
    pools.push_back({{"index", pool.index()},
                     {"cloud", pool.cloud()},
                     {"workers", pool.workers()},
                     {"state", PoolStateName(pool.state())},
                     {"launch", pool.launch()},
                     {"step", pool.step()},
                     {"error", pool.error()},
                     {"waiting_for", pool.waiting_for()}});
  }
  nlohmann::json events = nlohmann::json::array();
  for (const v1::JobEvent& e : job.events()) {
    events.push_back({{"time_unix_ms", e.time_unix_ms()},
                      {"from", JobStateName(e.from())},
                      {"to", JobStateName(e.to())},
                      {"reason", e.reason()},
                      {"cloud", e.cloud()},
                      {"step", e.step()}});
  }
  return {{"job", job.job_id()},
          {"name", job.spec().name()},
          {"state", JobStateName(job.state())},
          {"step", p.step()},
          {"total_steps", p.total_steps()},
          {"epoch", p.epoch()},
          {"global_cursor", p.global_cursor()},
          {"loss", p.loss()},
          {"test_accuracy", Accuracy(p.test_accuracy())},
          {"test_loss", p.test_loss()},
          {"samples_per_s", p.samples_per_s()},
          {"wan_bytes_sent", p.wan_bytes_sent()},
          {"compression_ratio", p.compression_ratio()},
          {"state_digest", p.state_digest()},
          {"generation", job.generation()},
          {"restarts", job.restarts()},
          {"last_detect_s", job.last_detect_s()},
          {"last_recover_s", job.last_recover_s()},
          {"submitted_unix_ms", job.submitted_unix_ms()},
          {"finished_unix_ms", job.finished_unix_ms()},
          {"pools", pools},
          {"events", events}};
}

nlohmann::json JobSummaryJson(const v1::JobStatus& job) {
  return {{"job", job.job_id()},
          {"state", JobStateName(job.state())},
          {"step", job.progress().step()},
          {"total_steps", job.progress().total_steps()},
          {"test_accuracy", Accuracy(job.progress().test_accuracy())},
          {"submitted_unix_ms", job.submitted_unix_ms()},
          {"age_s", job.submitted_unix_ms() > 0
                        ? std::max<int64_t>(0, NowUnixMs() - job.submitted_unix_ms()) / 1000.0
                        : 0.0}};
}

nlohmann::json PoolHealthJson(const v1::PoolHealth& pool) {
  return {{"cloud", pool.pool().cloud()},
          {"alive", pool.alive()},
          {"slots", pool.pool().slots()},
          {"free_slots", pool.free_slots()},
          {"wan_endpoint", pool.pool().wan_endpoint()},
          {"replication_endpoint", pool.pool().replication_endpoint()},
          {"last_heartbeat_unix_ms", pool.last_heartbeat_unix_ms()}};
}

void PrintJob(std::ostream& out, const v1::JobStatus& job) {
  const v1::TrainingProgress& p = job.progress();
  out << absl::StrFormat("job %s  %s  (generation %d, restarts %d)\n", job.job_id(),
                         JobStateName(job.state()), job.generation(), job.restarts());
  if (job.submitted_unix_ms() > 0) {
    out << absl::StrFormat("  submitted %s (%s ago)", IsoTime(job.submitted_unix_ms()),
                           Age(job.submitted_unix_ms()));
    if (job.finished_unix_ms() > 0) out << ", finished " << IsoTime(job.finished_unix_ms());
    out << "\n";
  }
  std::string line = absl::StrFormat("  step %s  epoch %d", StepText(p), p.epoch());
  if (p.step() > 0) line += absl::StrFormat("  loss %.4f", p.loss());
  if (p.test_accuracy() >= 0) {
    line += absl::StrFormat("  test accuracy %.4f (loss %.4f)", p.test_accuracy(), p.test_loss());
  }
  if (p.samples_per_s() > 0) line += absl::StrFormat("  %.0f samples/s", p.samples_per_s());
  out << line << "\n";
  if (p.wan_bytes_sent() > 0) {
    out << absl::StrFormat("  WAN %s sent, compression ratio %.1f\n",
                           HumanBytes(p.wan_bytes_sent()), p.compression_ratio());
  }
  if (job.last_detect_s() > 0 || job.last_recover_s() > 0) {
    out << absl::StrFormat("  last recovery: lost cloud detected in %.2f s, recovered in %.2f s\n",
                           job.last_detect_s(), job.last_recover_s());
  }
  if (job.pools_size() > 0) {
    out << "pools:\n";
    for (const v1::PoolStatus& pool : job.pools()) out << PoolLine(pool) << "\n";
  }
  if (job.events_size() > 0) {
    out << "events:\n";
    for (const v1::JobEvent& e : job.events()) {
      out << "  " << IsoTime(e.time_unix_ms()) << "  " << EventText(e) << "\n";
    }
  }
}

void PrintJobTable(std::ostream& out, const std::vector<v1::JobStatus>& jobs) {
  out << absl::StrFormat("%-32s %-11s %15s %9s %8s\n", "JOB", "STATE", "STEP", "ACCURACY", "AGE");
  for (const v1::JobStatus& job : jobs) {
    const double accuracy = job.progress().test_accuracy();
    out << absl::StrFormat("%-32s %-11s %15s %9s %8s\n", job.job_id(), JobStateName(job.state()),
                           StepText(job.progress()),
                           accuracy >= 0 ? absl::StrFormat("%.4f", accuracy) : "-",
                           Age(job.submitted_unix_ms()));
  }
}

void PrintPoolTable(std::ostream& out, const std::vector<v1::PoolHealth>& pools) {
  out << absl::StrFormat("%-16s %-6s %6s %6s %-22s %s\n", "CLOUD", "ALIVE", "SLOTS", "FREE",
                         "WAN ENDPOINT", "LAST HEARTBEAT");
  for (const v1::PoolHealth& pool : pools) {
    out << absl::StrFormat(
        "%-16s %-6s %6d %6d %-22s %s\n", pool.pool().cloud(), pool.alive() ? "yes" : "no",
        pool.pool().slots(), pool.free_slots(), pool.pool().wan_endpoint(),
        pool.last_heartbeat_unix_ms() > 0 ? Age(pool.last_heartbeat_unix_ms()) + " ago" : "-");
  }
}

WatchView::WatchView(std::ostream& out, bool terminal, bool json)
    : out_(out), terminal_(terminal && !json), json_(json) {}

WatchView::~WatchView() { Finish(); }

void WatchView::UpdateRate(const v1::JobStatus& job, Rate& rate) {
  // MB/s over the answers of the last few seconds: progress reports and
  // polls do not line up, so two neighbouring answers can show no growth.
  // The job's wall_s dates each report where it was made; our clock only
  // dates when we asked, so it is the fallback.
  constexpr auto kWindow = std::chrono::seconds(5);
  const auto now = std::chrono::steady_clock::now();
  const uint64_t bytes = job.progress().wan_bytes_sent();
  const double wall_s = job.progress().wall_s();
  if (!rate.samples.empty() &&
      (bytes < rate.samples.back().bytes || wall_s < rate.samples.back().wall_s)) {
    rate.samples.clear();  // a restart from a checkpoint starts the counters again
  }
  rate.samples.push_back({now, wall_s, bytes});
  while (rate.samples.size() > 2 && now - rate.samples.front().at > kWindow) {
    rate.samples.pop_front();
  }
  const Sample& first = rate.samples.front();
  if (bytes == 0) return;
  if (wall_s > first.wall_s && first.wall_s > 0) {
    rate.mb_per_s = (bytes - first.bytes) / 1e6 / (wall_s - first.wall_s);
    return;
  }
  const double seconds = std::chrono::duration<double>(now - first.at).count();
  if (seconds >= 0.5) rate.mb_per_s = (bytes - first.bytes) / 1e6 / seconds;
}

std::vector<std::string> WatchView::Render(const v1::JobStatus& job, const Rate& rate) const {
  const v1::TrainingProgress& p = job.progress();
  std::vector<std::string> lines;
  std::string head = absl::StrFormat("job %s  %s", job.job_id(), JobStateName(job.state()));
  const std::string reason = LatestReason(job);
  if (!reason.empty()) head += "  (" + reason + ")";
  lines.push_back(head);
  std::string line = "  step " + StepText(p);
  if (p.total_steps() > 0) {
    constexpr int kWidth = 24;
    const int filled =
        static_cast<int>(kWidth * std::min(p.step(), p.total_steps()) / p.total_steps());
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    line += " [" + bar + "]";
  }
  if (p.step() > 0) line += absl::StrFormat(" loss %.4f", p.loss());
  if (p.test_accuracy() >= 0) line += absl::StrFormat(" | test acc %.4f", p.test_accuracy());
  if (p.samples_per_s() > 0) line += absl::StrFormat(" | %.0f samples/s", p.samples_per_s());
  if (rate.mb_per_s >= 0) line += absl::StrFormat(" | WAN %.2f MB/s", rate.mb_per_s);
  if (p.compression_ratio() > 0) {
    line += absl::StrFormat("%s x%.1f compressed", rate.mb_per_s >= 0 ? "," : " |",
                            p.compression_ratio());
  }
  const uint32_t batch = job.spec().train().global_batch();
  if (!IsTerminal(job.state()) && p.samples_per_s() > 0 && batch > 0 &&
      p.total_steps() > p.step()) {
    const double eta =
        (p.total_steps() - p.step()) * static_cast<double>(batch) / p.samples_per_s();
    line += " | ETA " + ProgressView::FormatDuration(eta);
  }
  lines.push_back(line);
  for (const v1::PoolStatus& pool : job.pools()) lines.push_back(PoolLine(pool));
  return lines;
}

void WatchView::Update(const v1::JobStatus& job) {
  UpdateRate(job, rate_);
  const v1::TrainingProgress& p = job.progress();
  if (json_) {
    std::vector<std::string> pool_states;
    for (const v1::PoolStatus& pool : job.pools()) {
      pool_states.push_back(PoolStateName(pool.state()) + std::to_string(pool.step()));
    }
    const std::string key = absl::StrFormat("%d/%d/%d/%s", job.state(), p.step(), job.events_size(),
                                            absl::StrJoin(pool_states, ","));
    if (key != last_json_key_) {
      out_ << JobJson(job).dump() << std::endl;
      last_json_key_ = key;
    }
    return;
  }
  if (terminal_) {
    if (!cursor_hidden_) {
      out_ << "\033[?25l";
      cursor_hidden_ = true;
    }
    const size_t width = static_cast<size_t>(std::max(20, TerminalWidth() - 1));
    if (lines_drawn_ > 0) out_ << "\033[" << lines_drawn_ << "F";
    std::vector<std::string> lines = Render(job, rate_);
    for (std::string& line : lines) {
      // A line that wraps would break the count of lines to move up.
      if (line.size() > width) line.resize(width);
      out_ << "\033[K" << line << "\n";
    }
    out_ << "\033[J" << std::flush;
    lines_drawn_ = static_cast<int>(lines.size());
    return;
  }
  if (events_shown_ > job.events_size()) events_shown_ = 0;
  for (int i = events_shown_; i < job.events_size(); ++i) {
    const v1::JobEvent& e = job.events(i);
    out_ << ClockTime(e.time_unix_ms()) << " job " << job.job_id() << ": " << EventText(e) << "\n";
  }
  events_shown_ = job.events_size();
  if (p.total_steps() > 0 && p.step() > 0 && p.step() >= next_step_) {
    std::vector<std::string> lines = Render(job, rate_);
    out_ << ClockTime(NowUnixMs()) << " job " << job.job_id() << ":" << lines[1] << "\n";
    next_step_ = p.step() + std::max<uint64_t>(1, p.total_steps() / 20);
  }
  out_ << std::flush;
}

void WatchView::Finish() {
  if (cursor_hidden_) {
    out_ << "\033[?25h" << std::flush;
    cursor_hidden_ = false;
  }
}

}  // namespace tandem::cli
