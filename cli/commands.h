// The subcommands of `tandem`. Each takes the arguments after its name and
// returns the process exit code.
#ifndef TANDEM_CLI_COMMANDS_H_
#define TANDEM_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace tandem::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // the job or the operation failed
inline constexpr int kExitUsage = 2;   // bad flags, bad values, bad spec
inline constexpr int kExitUnreachable = 3;  // the coordinator cannot be reached

int TrainCommand(const std::vector<std::string>& args);
int CheckpointsCommand(const std::vector<std::string>& args);
int ExportCommand(const std::vector<std::string>& args);
int CertsCommand(const std::vector<std::string>& args);
int ServeStoreCommand(const std::vector<std::string>& args);
int ReplicateCommand(const std::vector<std::string>& args);
int AgentCommand(const std::vector<std::string>& args);
int CoordinatorCommand(const std::vector<std::string>& args);
// The commands that talk to the coordinator (cli/job_commands.cc).
int SubmitCommand(const std::vector<std::string>& args);
int StatusCommand(const std::vector<std::string>& args);
int ListCommand(const std::vector<std::string>& args);
int LogsCommand(const std::vector<std::string>& args);
int CancelCommand(const std::vector<std::string>& args);
int MigrateCommand(const std::vector<std::string>& args);
// `tandem up`: a coordinator and two clouds' agents on this machine.
int UpCommand(const std::vector<std::string>& args);
// `tandem worker`: one rank of a pool, started by mpirun, not by users.
int WorkerCommand(int argc, char** argv);

// Where commands keep their checkpoints unless told: ~/.tandem/store.
std::string DefaultStoreDir();
// Where TLS material lives unless told: ~/.tandem/certs.
std::string DefaultCertsDir();
// This executable's path, for the processes it starts as `tandem ...`.
std::string SelfExecutable();

}  // namespace tandem::cli

#endif  // TANDEM_CLI_COMMANDS_H_
