// The line protocol a pool leader (rank 0) speaks to whoever launched it:
// one event per line on stdout, kEventPrefix followed by a JSON object with an
// "event" field. Anything else on the stream is ordinary output and is passed
// through. Events and their fields:
//   start       total_steps, start_step, ranks, parameters, resumed
//   progress    step, total_steps, epoch, cursor, loss, samples_per_s
//   eval        step, test_accuracy, test_loss, eval_s (its wall time)
//   waiting     step, message: the peers the leader waits for in an exchange
//               (alive, so not dropped), or "" once they delivered
//   plan        generation, active, step, reason
//   stopped     step, reason
//   checkpoint  step, state_digest, bytes, save_ms
//   warning     message
//   done        steps, epochs, cursor, loss, test_accuracy, test_loss,
//               samples_per_s, state_digest
//   error       message
#ifndef TANDEM_WORKER_WORKER_EVENTS_H_
#define TANDEM_WORKER_WORKER_EVENTS_H_

namespace tandem {

inline constexpr char kEventPrefix[] = "@tandem-event ";

}  // namespace tandem

#endif  // TANDEM_WORKER_WORKER_EVENTS_H_
