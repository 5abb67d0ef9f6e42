// Job spec: the YAML a user writes, parsed into the JobSpec proto and checked.
//
// Every error names the field with its dotted path ("train.lr", "pools[1].workers")
// and says what is wrong with it: an unknown key, a wrong type, a value out of
// range, or a missing required field. Defaults are filled in for keys the YAML
// leaves out, so a parsed spec is complete. Thread-safe (no shared state).
#ifndef TANDEM_WORKER_JOB_SPEC_H_
#define TANDEM_WORKER_JOB_SPEC_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "tandem/v1/job.pb.h"

namespace tandem {

// Where Debian's dataset-fashion-mnist package puts the files.
inline constexpr char kDefaultFashionMnistPath[] = "/usr/share/datasets/fashion-mnist";

// Parses `yaml` (from `source`, used only in messages) into a validated spec.
// Returns InvalidArgument with "SOURCE: FIELD: PROBLEM" on bad input.
absl::StatusOr<v1::JobSpec> ParseJobSpec(std::string_view yaml, std::string_view source);

// Reads and parses the file at `path`; NotFound if it cannot be read.
absl::StatusOr<v1::JobSpec> LoadJobSpec(const std::string& path);

// Checks ranges and cross-field rules on an already built spec (as ParseJobSpec
// does after mapping); InvalidArgument naming the field otherwise.
absl::Status ValidateJobSpec(const v1::JobSpec& spec);

// The YAML spelling of enum values ("cnn", "adam", "powersgd").
std::string_view ModelArchName(v1::ModelArch arch);
std::string_view OptimizerName(v1::OptimizerKind kind);
std::string_view CodecName(v1::CodecKind kind);

// Total samples a rank count reads: the sum over pools of workers.
uint32_t TotalWorkers(const v1::JobSpec& spec);

}  // namespace tandem

#endif  // TANDEM_WORKER_JOB_SPEC_H_
