// Test support: runs the real `tandem` binary (the one this build made, or
// $TANDEM_BIN) as a child process and captures what it prints, plus temp
// folders that clean up.
#ifndef TANDEM_TESTS_SUPPORT_RUN_TANDEM_H_
#define TANDEM_TESTS_SUPPORT_RUN_TANDEM_H_

#include <string>
#include <vector>

namespace tandem::testing {

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  // The last non-empty line of stdout (where --output json puts its object).
  std::string LastLine() const;
};

// Runs TANDEM_BIN with `args`; stdout and stderr go to files, not a terminal.
RunResult RunTandem(const std::vector<std::string>& args);

// The tandem binary the tests run (the one this build made, or $TANDEM_BIN).
std::string TandemBinary();

// The source tree (the one this build came from, or $TANDEM_SOURCE_DIR).
std::string SourceDir();

// A fresh folder under /tmp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }
  // Writes `text` to path()/name and returns the full path.
  std::string Write(const std::string& name, const std::string& text) const;

 private:
  std::string path_;
};

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_SUPPORT_RUN_TANDEM_H_
