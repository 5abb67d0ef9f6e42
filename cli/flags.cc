#include "cli/flags.h"

#include <iostream>

namespace tandem::cli {

namespace po = boost::program_options;

bool ParseFlags(const char* command, const std::vector<std::string>& args,
                const po::options_description& flags, const po::options_description& hidden,
                const po::positional_options_description& positional, po::variables_map& vm,
                bool* help) {
  po::options_description all;
  all.add(flags).add(hidden);
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "tandem " << command << ": " << e.what() << "\nRun `tandem " << command
              << " --help` for the options.\n";
    return false;
  }
  *help = vm.count("help") != 0;
  if (*help) std::cout << flags;
  return true;
}

bool ParseFlags(const char* command, const std::vector<std::string>& args,
                const po::options_description& flags, po::variables_map& vm, bool* help) {
  return ParseFlags(command, args, flags, po::options_description(),
                    po::positional_options_description(), vm, help);
}

bool CheckOutputFormat(const char* command, const std::string& output) {
  if (output == "text" || output == "json") return true;
  std::cerr << "tandem " << command << ": --output must be text or json, got '" << output << "'\n";
  return false;
}

std::unique_ptr<CheckpointStore> OpenStoreForReading(const char* command, const std::string& dir) {
  CheckpointStoreOptions options;
  options.read_only = true;
  options.create_if_missing = false;
  absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(dir, options);
  if (!store.ok()) {
    std::cerr << "tandem " << command << ": " << store.status().message() << "\n";
    return nullptr;
  }
  return std::move(*store);
}

}  // namespace tandem::cli
