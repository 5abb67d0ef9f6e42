// What every tandem subcommand does the same way: parse its flags (a usage
// error prints the problem and a pointer to --help), check --output, and open
// a store for reading.
#ifndef TANDEM_CLI_FLAGS_H_
#define TANDEM_CLI_FLAGS_H_

#include <boost/program_options.hpp>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_store.h"

namespace tandem::cli {

// Parses `args` against `flags`, plus `hidden` options bound to `positional`
// arguments. Returns false after printing a usage error to stderr. Sets *help
// and prints `flags` to stdout when --help was given.
bool ParseFlags(const char* command, const std::vector<std::string>& args,
                const boost::program_options::options_description& flags,
                const boost::program_options::options_description& hidden,
                const boost::program_options::positional_options_description& positional,
                boost::program_options::variables_map& vm, bool* help);

// The same, for a command with no positional arguments.
bool ParseFlags(const char* command, const std::vector<std::string>& args,
                const boost::program_options::options_description& flags,
                boost::program_options::variables_map& vm, bool* help);

// True for "text" and "json"; otherwise prints a usage error and returns false.
bool CheckOutputFormat(const char* command, const std::string& output);

// Opens an existing store read-only (it may be in use by a running job);
// prints the error and returns nullptr if it cannot.
std::unique_ptr<CheckpointStore> OpenStoreForReading(const char* command, const std::string& dir);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_FLAGS_H_
