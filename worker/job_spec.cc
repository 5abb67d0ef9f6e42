#include "worker/job_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tandem {
namespace {

constexpr size_t kMaxNameLength = 63;
constexpr uint32_t kMaxGlobalBatch = 65536;
constexpr uint32_t kMaxPoolWorkers = 256;
constexpr uint32_t kMaxPowerSgdRank = 64;
constexpr uint32_t kMaxStreams = 64;
constexpr char kFashionMnist[] = "fashion-mnist";

// The field name for errors about the document as a whole.
constexpr char kTopLevel[] = "(top level)";

// yaml-cpp tags a plain (unquoted) scalar "?"; a quoted or block scalar "!".
// Only plain scalars, or ones explicitly tagged, are numbers in YAML.
constexpr char kPlainTag[] = "?";
constexpr char kIntTag[] = "tag:yaml.org,2002:int";
constexpr char kFloatTag[] = "tag:yaml.org,2002:float";

// Long values are cut in messages so one bad line cannot flood a terminal.
constexpr size_t kMaxQuotedLength = 64;

template <typename E>
struct EnumName {
  absl::string_view name;
  E value;
};

constexpr EnumName<v1::ModelArch> kModelArchs[] = {
    {"mlp", v1::MODEL_ARCH_MLP},
    {"cnn", v1::MODEL_ARCH_CNN},
};
constexpr EnumName<v1::OptimizerKind> kOptimizers[] = {
    {"sgd", v1::OPTIMIZER_KIND_SGD},
    {"adam", v1::OPTIMIZER_KIND_ADAM},
};
constexpr EnumName<v1::LrSchedule> kLrSchedules[] = {
    {"constant", v1::LR_SCHEDULE_CONSTANT},
    {"cosine", v1::LR_SCHEDULE_COSINE},
};
constexpr EnumName<v1::CodecKind> kCodecs[] = {
    {"none", v1::CODEC_KIND_NONE}, {"fp16", v1::CODEC_KIND_FP16},
    {"bf16", v1::CODEC_KIND_BF16}, {"int8", v1::CODEC_KIND_INT8},
    {"topk", v1::CODEC_KIND_TOPK}, {"powersgd", v1::CODEC_KIND_POWERSGD},
};
constexpr EnumName<v1::ExchangeMode> kExchangeModes[] = {
    {"sync", v1::EXCHANGE_MODE_SYNC},
    {"delayed", v1::EXCHANGE_MODE_DELAYED},
};
constexpr EnumName<v1::FactorPrecision> kFactorPrecisions[] = {
    {"fp32", v1::FACTOR_PRECISION_FP32},
    {"fp16", v1::FACTOR_PRECISION_FP16},
    {"int8", v1::FACTOR_PRECISION_INT8},
};
constexpr EnumName<v1::Placement> kPlacements[] = {
    {"explicit", v1::PLACEMENT_EXPLICIT},
    {"any", v1::PLACEMENT_ANY},
};

// The keys each level accepts, in the order the docs and examples list them.
constexpr absl::string_view kTopKeys[] = {"name",       "model", "data",     "train",
                                          "checkpoint", "pools", "exchange", "placement"};
constexpr absl::string_view kModelKeys[] = {"arch"};
constexpr absl::string_view kDataKeys[] = {"dataset", "path"};
constexpr absl::string_view kTrainKeys[] = {
    "epochs",      "max_steps", "global_batch", "optimizer",        "lr",
    "lr_schedule", "momentum",  "seed",         "eval_every_steps", "adam_beta1",
    "adam_beta2",  "adam_eps",  "weight_decay"};
constexpr absl::string_view kCheckpointKeys[] = {"every_steps", "keep", "async"};
constexpr absl::string_view kPoolKeys[] = {"cloud", "workers"};
constexpr absl::string_view kExchangeKeys[] = {"codec",   "rank", "factors",           "topk_ratio",
                                               "streams", "mode", "digest_every_steps"};

template <typename E, size_t N>
absl::string_view NameIn(const EnumName<E> (&table)[N], E value) {
  for (const EnumName<E>& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return value == E{} ? "unspecified" : "unknown";
}

std::string JoinNames(absl::Span<const absl::string_view> names) {
  std::string out;
  for (absl::string_view name : names) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", name);
  }
  return out;
}

template <typename E, size_t N>
std::string Choices(const EnumName<E> (&table)[N]) {
  std::vector<absl::string_view> names;
  for (const EnumName<E>& entry : table) names.push_back(entry.name);
  return JoinNames(names);
}

std::string Quote(absl::string_view text) {
  if (text.size() > kMaxQuotedLength) {
    return absl::StrCat("\"", absl::CHexEscape(text.substr(0, kMaxQuotedLength)), "\"...");
  }
  return absl::StrCat("\"", absl::CHexEscape(text), "\"");
}

// What a node is, for "expected X, got Y".
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      if (node.Tag() == kPlainTag) return Quote(node.Scalar());
      return absl::StrCat("the string ", Quote(node.Scalar()));
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string Child(absl::string_view path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field.empty() ? kTopLevel : field, ": ", problem));
}

bool IsDigits(absl::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return absl::ascii_isdigit(c); });
}

// YAML 1.2 core schema float, less .inf and .nan, which no field accepts:
// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
bool IsYamlNumber(absl::string_view text) {
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < text.size() && absl::ascii_isdigit(text[i])) ++i;
    return i - start;
  };
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
  size_t mantissa_digits = digits();
  if (i < text.size() && text[i] == '.') {
    ++i;
    mantissa_digits += digits();
  }
  if (mantissa_digits == 0) return false;
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
    if (digits() == 0) return false;
  }
  return i == text.size();
}

absl::StatusOr<uint64_t> ToUnsigned(const YAML::Node& node, absl::string_view field, uint64_t max) {
  const bool numeric = node.IsScalar() && (node.Tag() == kPlainTag || node.Tag() == kIntTag);
  if (!numeric || !IsDigits(node.Scalar())) {
    return FieldError(field, absl::StrCat("expected a non-negative integer, got ", Describe(node)));
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(node.Scalar(), &value) || value > max) {
    return FieldError(field, absl::StrCat("must be at most ", max, ", got ", node.Scalar()));
  }
  return value;
}

absl::StatusOr<double> ToDouble(const YAML::Node& node, absl::string_view field) {
  const bool numeric = node.IsScalar() && (node.Tag() == kPlainTag || node.Tag() == kIntTag ||
                                           node.Tag() == kFloatTag);
  double value = 0;
  if (!numeric || !IsYamlNumber(node.Scalar()) || !absl::SimpleAtod(node.Scalar(), &value)) {
    return FieldError(field, absl::StrCat("expected a number, got ", Describe(node)));
  }
  if (!std::isfinite(value)) {
    return FieldError(field, absl::StrCat("is too large for a number, got ", node.Scalar()));
  }
  return value;
}

absl::StatusOr<bool> ToBool(const YAML::Node& node, absl::string_view field) {
  if (node.IsScalar() && node.Tag() == kPlainTag) {
    if (node.Scalar() == "true") return true;
    if (node.Scalar() == "false") return false;
  }
  return FieldError(field, absl::StrCat("expected true or false, got ", Describe(node)));
}

absl::StatusOr<std::string> ToString(const YAML::Node& node, absl::string_view field) {
  if (!node.IsScalar()) {
    return FieldError(field, absl::StrCat("expected a string, got ", Describe(node)));
  }
  return node.Scalar();
}

template <typename E, size_t N>
absl::StatusOr<E> ToEnum(const YAML::Node& node, absl::string_view field,
                         const EnumName<E> (&table)[N]) {
  if (node.IsScalar()) {
    for (const EnumName<E>& entry : table) {
      if (entry.name == node.Scalar()) return entry.value;
    }
  }
  return FieldError(field,
                    absl::StrCat("must be one of ", Choices(table), "; got ", Describe(node)));
}

// Reads one YAML mapping of the spec. It keeps the first error and turns later
// reads into no-ops, so that the mapping code below reads as a list of keys
// rather than a ladder of early returns.
class MapReader {
 public:
  // An absent or null `node` is an empty mapping: a section left out, or one
  // whose keys are all commented out, takes its defaults.
  MapReader(const std::optional<YAML::Node>& node, std::string path,
            absl::Span<const absl::string_view> known_keys)
      : path_(std::move(path)) {
    if (!node.has_value() || node->IsNull()) return;
    if (!node->IsMap()) {
      Fail(FieldError(path_, absl::StrCat("expected a mapping, got ", Describe(*node))));
      return;
    }
    for (const auto& entry : *node) {
      if (!entry.first.IsScalar()) {
        Fail(FieldError(path_, absl::StrCat("keys must be strings, got ", Describe(entry.first))));
        return;
      }
      const std::string& key = entry.first.Scalar();
      if (std::find(known_keys.begin(), known_keys.end(), key) == known_keys.end()) {
        Fail(FieldError(Child(path_, key),
                        absl::StrCat("unknown key; known keys: ", JoinNames(known_keys))));
        return;
      }
      // yaml-cpp keeps both entries of a repeated key and lookups see the
      // first, so a later "fix" further down a file would silently not apply.
      if (!entries_.emplace(key, entry.second).second) {
        Fail(FieldError(Child(path_, key), "duplicate key"));
        return;
      }
    }
  }

  const absl::Status& status() const { return status_; }
  bool Has(absl::string_view key) const { return entries_.find(key) != entries_.end(); }

  std::optional<YAML::Node> Get(absl::string_view key) const {
    auto it = entries_.find(key);
    if (it == entries_.end()) return std::nullopt;
    return it->second;
  }

  void Require(absl::string_view key) {
    if (!Has(key)) Fail(FieldError(Child(path_, key), "required field is missing"));
  }

  template <typename Set>
  void Uint32(absl::string_view key, Set set) {
    Read(
        key,
        [](const YAML::Node& node, absl::string_view field) {
          return ToUnsigned(node, field, std::numeric_limits<uint32_t>::max());
        },
        [&](uint64_t value) { set(static_cast<uint32_t>(value)); });
  }

  template <typename Set>
  void Uint64(absl::string_view key, Set set) {
    Read(
        key,
        [](const YAML::Node& node, absl::string_view field) {
          return ToUnsigned(node, field, std::numeric_limits<uint64_t>::max());
        },
        set);
  }

  template <typename Set>
  void Double(absl::string_view key, Set set) {
    Read(key, ToDouble, set);
  }

  template <typename Set>
  void Bool(absl::string_view key, Set set) {
    Read(key, ToBool, set);
  }

  template <typename Set>
  void String(absl::string_view key, Set set) {
    Read(key, ToString, set);
  }

  template <typename E, size_t N, typename Set>
  void Enum(absl::string_view key, const EnumName<E> (&table)[N], Set set) {
    Read(
        key,
        [&table](const YAML::Node& node, absl::string_view field) {
          return ToEnum(node, field, table);
        },
        set);
  }

 private:
  void Fail(absl::Status status) {
    if (status_.ok()) status_ = std::move(status);
  }

  template <typename Convert, typename Set>
  void Read(absl::string_view key, Convert convert, Set set) {
    if (!status_.ok()) return;
    std::optional<YAML::Node> node = Get(key);
    if (!node.has_value()) return;
    auto value = convert(*node, Child(path_, key));
    if (!value.ok()) {
      Fail(value.status());
      return;
    }
    set(*std::move(value));
  }

  std::string path_;
  std::map<std::string, YAML::Node, std::less<>> entries_;
  absl::Status status_;
};

// Everything but train.lr and train.momentum, whose defaults depend on the
// optimizer and are filled once it is known.
void SetDefaults(v1::JobSpec* spec) {
  spec->mutable_data()->set_dataset(kFashionMnist);
  spec->mutable_data()->set_path(kDefaultFashionMnistPath);

  v1::TrainSpec* train = spec->mutable_train();
  train->set_epochs(1);
  train->set_max_steps(0);
  train->set_global_batch(128);
  train->set_optimizer(v1::OPTIMIZER_KIND_SGD);
  train->set_seed(1);
  train->set_eval_every_steps(0);
  train->set_adam_beta1(0.9);
  train->set_adam_beta2(0.999);
  train->set_adam_eps(1e-8);
  train->set_weight_decay(0);
  train->set_lr_schedule(v1::LR_SCHEDULE_CONSTANT);

  spec->mutable_checkpoint()->set_every_steps(100);
  spec->mutable_checkpoint()->set_keep(3);
  spec->mutable_checkpoint()->set_async(true);

  v1::ExchangeSpec* exchange = spec->mutable_exchange();
  exchange->set_codec(v1::CODEC_KIND_NONE);
  exchange->set_rank(4);
  exchange->set_factors(v1::FACTOR_PRECISION_FP32);
  exchange->set_topk_ratio(0.01);
  exchange->set_streams(4);
  exchange->set_mode(v1::EXCHANGE_MODE_SYNC);
  exchange->set_digest_every_steps(50);

  spec->set_placement(v1::PLACEMENT_EXPLICIT);
}

absl::Status MapPools(const std::optional<YAML::Node>& node, v1::JobSpec* spec) {
  if (!node.has_value()) return FieldError("pools", "required field is missing");
  if (node->IsNull()) return FieldError("pools", "must list at least one pool");
  if (!node->IsSequence()) {
    return FieldError("pools", absl::StrCat("expected a sequence, got ", Describe(*node)));
  }
  size_t index = 0;
  for (const YAML::Node& element : *node) {
    MapReader pool(element, absl::StrCat("pools[", index++, "]"), kPoolKeys);
    v1::PoolSpec* out = spec->add_pools();
    pool.Require("cloud");
    pool.Require("workers");
    pool.String("cloud", [out](std::string value) { out->set_cloud(std::move(value)); });
    pool.Uint32("workers", [out](uint32_t value) { out->set_workers(value); });
    if (!pool.status().ok()) return pool.status();
  }
  return absl::OkStatus();
}

// Maps the document onto a JobSpec with defaults filled; errors are
// "FIELD: PROBLEM" without the source, which the caller adds.
absl::StatusOr<v1::JobSpec> MapJobSpec(const YAML::Node& root) {
  v1::JobSpec spec;
  SetDefaults(&spec);

  MapReader top(root, "", kTopKeys);
  top.Require("name");
  top.String("name", [&spec](std::string value) { spec.set_name(std::move(value)); });
  top.Enum("placement", kPlacements, [&spec](v1::Placement value) { spec.set_placement(value); });
  if (!top.status().ok()) return top.status();

  MapReader model(top.Get("model"), "model", kModelKeys);
  v1::ModelSpec* model_out = spec.mutable_model();
  model.Require("arch");
  model.Enum("arch", kModelArchs, [model_out](v1::ModelArch value) { model_out->set_arch(value); });
  if (!model.status().ok()) return model.status();

  MapReader data(top.Get("data"), "data", kDataKeys);
  v1::DataSpec* data_out = spec.mutable_data();
  data.String("dataset",
              [data_out](std::string value) { data_out->set_dataset(std::move(value)); });
  data.String("path", [data_out](std::string value) { data_out->set_path(std::move(value)); });
  if (!data.status().ok()) return data.status();

  MapReader train(top.Get("train"), "train", kTrainKeys);
  v1::TrainSpec* t = spec.mutable_train();
  train.Uint32("epochs", [t](uint32_t value) { t->set_epochs(value); });
  train.Uint64("max_steps", [t](uint64_t value) { t->set_max_steps(value); });
  train.Uint32("global_batch", [t](uint32_t value) { t->set_global_batch(value); });
  train.Enum("optimizer", kOptimizers, [t](v1::OptimizerKind value) { t->set_optimizer(value); });
  train.Enum("lr_schedule", kLrSchedules, [t](v1::LrSchedule value) { t->set_lr_schedule(value); });
  train.Double("lr", [t](double value) { t->set_lr(value); });
  train.Double("momentum", [t](double value) { t->set_momentum(value); });
  train.Uint64("seed", [t](uint64_t value) { t->set_seed(value); });
  train.Uint32("eval_every_steps", [t](uint32_t value) { t->set_eval_every_steps(value); });
  train.Double("adam_beta1", [t](double value) { t->set_adam_beta1(value); });
  train.Double("adam_beta2", [t](double value) { t->set_adam_beta2(value); });
  train.Double("adam_eps", [t](double value) { t->set_adam_eps(value); });
  train.Double("weight_decay", [t](double value) { t->set_weight_decay(value); });
  if (!train.status().ok()) return train.status();
  const bool adam = t->optimizer() == v1::OPTIMIZER_KIND_ADAM;
  if (!train.Has("lr")) t->set_lr(adam ? 0.001 : 0.05);
  // Momentum means nothing to Adam, whose betas play that part.
  if (!train.Has("momentum")) t->set_momentum(adam ? 0.0 : 0.9);

  MapReader checkpoint(top.Get("checkpoint"), "checkpoint", kCheckpointKeys);
  v1::CheckpointSpec* c = spec.mutable_checkpoint();
  checkpoint.Uint32("every_steps", [c](uint32_t value) { c->set_every_steps(value); });
  checkpoint.Uint32("keep", [c](uint32_t value) { c->set_keep(value); });
  checkpoint.Bool("async", [c](bool value) { c->set_async(value); });
  if (!checkpoint.status().ok()) return checkpoint.status();

  if (absl::Status status = MapPools(top.Get("pools"), &spec); !status.ok()) return status;

  MapReader exchange(top.Get("exchange"), "exchange", kExchangeKeys);
  v1::ExchangeSpec* x = spec.mutable_exchange();
  exchange.Enum("codec", kCodecs, [x](v1::CodecKind value) { x->set_codec(value); });
  exchange.Uint32("rank", [x](uint32_t value) { x->set_rank(value); });
  exchange.Enum("factors", kFactorPrecisions,
                [x](v1::FactorPrecision value) { x->set_factors(value); });
  exchange.Double("topk_ratio", [x](double value) { x->set_topk_ratio(value); });
  exchange.Uint32("streams", [x](uint32_t value) { x->set_streams(value); });
  exchange.Enum("mode", kExchangeModes, [x](v1::ExchangeMode value) { x->set_mode(value); });
  exchange.Uint32("digest_every_steps", [x](uint32_t value) { x->set_digest_every_steps(value); });
  if (!exchange.status().ok()) return exchange.status();

  return spec;
}

absl::Status CheckName(absl::string_view field, absl::string_view name) {
  if (name.empty()) return FieldError(field, "must not be empty");
  if (name.size() > kMaxNameLength) {
    return FieldError(
        field, absl::StrCat("must be at most ", kMaxNameLength, " characters, got ", name.size()));
  }
  auto lower_alnum = [](char c) { return absl::ascii_isdigit(c) || absl::ascii_islower(c); };
  const bool valid = lower_alnum(name[0]) && std::all_of(name.begin() + 1, name.end(), [&](char c) {
                       return lower_alnum(c) || c == '-' || c == '_' || c == '.';
                     });
  if (!valid) {
    return FieldError(field, absl::StrCat("must start with a lowercase letter or digit and contain "
                                          "only lowercase letters, digits, '-', '_' and '.'; got ",
                                          Quote(name)));
  }
  return absl::OkStatus();
}

absl::Status CheckBetween(absl::string_view field, uint64_t value, uint64_t lo, uint64_t hi) {
  if (value < lo || value > hi) {
    return FieldError(field, absl::StrCat("must be between ", lo, " and ", hi, ", got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckAtLeast(absl::string_view field, uint64_t value, uint64_t lo) {
  if (value < lo) return FieldError(field, absl::StrCat("must be at least ", lo, ", got ", value));
  return absl::OkStatus();
}

// The comparisons are written so that NaN fails them.
absl::Status CheckPositive(absl::string_view field, double value) {
  if (!(value > 0) || !std::isfinite(value)) {
    return FieldError(field, absl::StrCat("must be greater than 0, got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckNonNegative(absl::string_view field, double value) {
  if (!(value >= 0) || !std::isfinite(value)) {
    return FieldError(field, absl::StrCat("must be at least 0, got ", value));
  }
  return absl::OkStatus();
}

// [0, 1), the range of momentum-like decay factors.
absl::Status CheckDecay(absl::string_view field, double value) {
  if (!(value >= 0 && value < 1)) {
    return FieldError(field, absl::StrCat("must be in [0, 1), got ", value));
  }
  return absl::OkStatus();
}

// (0, 1], the range of a fraction that must keep something.
absl::Status CheckFraction(absl::string_view field, double value) {
  if (!(value > 0 && value <= 1)) {
    return FieldError(field, absl::StrCat("must be in (0, 1], got ", value));
  }
  return absl::OkStatus();
}

template <typename E, size_t N>
absl::Status CheckEnum(absl::string_view field, E value, const EnumName<E> (&table)[N]) {
  for (const EnumName<E>& entry : table) {
    if (entry.value == value) return absl::OkStatus();
  }
  return FieldError(
      field, absl::StrCat("must be one of ", Choices(table), "; got ", NameIn(table, value)));
}

// ValidateJobSpec without the early returns spelled out at every call.
class Checks {
 public:
  void Add(absl::Status status) {
    if (status_.ok()) status_ = std::move(status);
  }
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

std::string_view ToStd(absl::string_view text) { return {text.data(), text.size()}; }

uint64_t SumWorkers(const v1::JobSpec& spec) {
  uint64_t total = 0;
  for (const v1::PoolSpec& pool : spec.pools()) total += pool.workers();
  return total;
}

}  // namespace

absl::StatusOr<v1::JobSpec> ParseJobSpec(std::string_view yaml, std::string_view source_view) {
  // Debian's abseil has its own string_view, which StrCat needs.
  const absl::string_view source(source_view.data(), source_view.size());
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(std::string(yaml));
  } catch (const YAML::Exception& e) {
    const std::string where = e.mark.is_null() ? ""
                                               : absl::StrCat(" line ", e.mark.line + 1,
                                                              ", column ", e.mark.column + 1, ":");
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", where, " YAML syntax error: ", e.msg));
  }
  if (documents.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", kTopLevel, ": expected one YAML document, got ", documents.size()));
  }
  // An empty file has no document; it then fails on the first required key.
  const YAML::Node root = documents.empty() ? YAML::Node() : documents.front();

  absl::StatusOr<v1::JobSpec> spec = MapJobSpec(root);
  absl::Status status = spec.ok() ? ValidateJobSpec(*spec) : spec.status();
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", status.message()));
  }
  return spec;
}

absl::StatusOr<v1::JobSpec> LoadJobSpec(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("cannot open job spec ", path, ": ", std::generic_category().message(errno)));
  }
  std::string text;
  char buffer[8192];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) text.append(buffer, n);
  // A directory opens fine and only fails on read (EISDIR).
  if (std::ferror(file.get())) {
    return absl::NotFoundError(
        absl::StrCat("cannot read job spec ", path, ": ", std::generic_category().message(errno)));
  }
  return ParseJobSpec(text, path);
}

absl::Status ValidateJobSpec(const v1::JobSpec& spec) {
  Checks checks;
  checks.Add(CheckName("name", spec.name()));
  checks.Add(CheckEnum("model.arch", spec.model().arch(), kModelArchs));
  if (spec.data().dataset() != kFashionMnist) {
    checks.Add(FieldError("data.dataset", absl::StrCat("must be one of ", kFashionMnist, "; got ",
                                                       Quote(spec.data().dataset()))));
  }
  if (spec.data().path().empty()) checks.Add(FieldError("data.path", "must not be empty"));

  const v1::TrainSpec& train = spec.train();
  checks.Add(CheckAtLeast("train.epochs", train.epochs(), 1));
  checks.Add(CheckBetween("train.global_batch", train.global_batch(), 1, kMaxGlobalBatch));
  checks.Add(CheckEnum("train.optimizer", train.optimizer(), kOptimizers));
  checks.Add(CheckPositive("train.lr", train.lr()));
  if (train.lr_schedule() != v1::LR_SCHEDULE_UNSPECIFIED) {
    checks.Add(CheckEnum("train.lr_schedule", train.lr_schedule(), kLrSchedules));
  }
  checks.Add(CheckDecay("train.momentum", train.momentum()));
  checks.Add(CheckDecay("train.adam_beta1", train.adam_beta1()));
  checks.Add(CheckDecay("train.adam_beta2", train.adam_beta2()));
  checks.Add(CheckPositive("train.adam_eps", train.adam_eps()));
  checks.Add(CheckNonNegative("train.weight_decay", train.weight_decay()));

  checks.Add(CheckAtLeast("checkpoint.keep", spec.checkpoint().keep(), 1));

  if (spec.pools().empty()) checks.Add(FieldError("pools", "must list at least one pool"));
  std::map<absl::string_view, int> first_pool_of_cloud;
  for (int i = 0; i < spec.pools_size(); ++i) {
    const v1::PoolSpec& pool = spec.pools(i);
    const std::string field = absl::StrCat("pools[", i, "]");
    checks.Add(CheckName(Child(field, "cloud"), pool.cloud()));
    checks.Add(CheckBetween(Child(field, "workers"), pool.workers(), 1, kMaxPoolWorkers));
    auto [it, inserted] = first_pool_of_cloud.emplace(pool.cloud(), i);
    if (!inserted) {
      checks.Add(FieldError(Child(field, "cloud"),
                            absl::StrCat("duplicate cloud ", Quote(pool.cloud()),
                                         ", already used by pools[", it->second, "]")));
    }
  }

  const v1::ExchangeSpec& exchange = spec.exchange();
  checks.Add(CheckEnum("exchange.codec", exchange.codec(), kCodecs));
  checks.Add(CheckBetween("exchange.rank", exchange.rank(), 1, kMaxPowerSgdRank));
  if (exchange.factors() != v1::FACTOR_PRECISION_UNSPECIFIED) {
    checks.Add(CheckEnum("exchange.factors", exchange.factors(), kFactorPrecisions));
  }
  checks.Add(CheckFraction("exchange.topk_ratio", exchange.topk_ratio()));
  checks.Add(CheckBetween("exchange.streams", exchange.streams(), 1, kMaxStreams));
  checks.Add(CheckEnum("exchange.mode", exchange.mode(), kExchangeModes));
  checks.Add(CheckEnum("placement", spec.placement(), kPlacements));

  // Every rank reads at least one sample of each global batch.
  const uint64_t workers = SumWorkers(spec);
  if (train.global_batch() < workers) {
    checks.Add(FieldError("train.global_batch",
                          absl::StrCat("must be at least the total number of workers (", workers,
                                       "), got ", train.global_batch())));
  }
  return checks.status();
}

std::string_view ModelArchName(v1::ModelArch arch) { return ToStd(NameIn(kModelArchs, arch)); }

std::string_view OptimizerName(v1::OptimizerKind kind) { return ToStd(NameIn(kOptimizers, kind)); }

std::string_view CodecName(v1::CodecKind kind) { return ToStd(NameIn(kCodecs, kind)); }

uint32_t TotalWorkers(const v1::JobSpec& spec) {
  const uint64_t total = SumWorkers(spec);
  return static_cast<uint32_t>(std::min<uint64_t>(total, std::numeric_limits<uint32_t>::max()));
}

}  // namespace tandem
