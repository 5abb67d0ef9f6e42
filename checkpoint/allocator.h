// Process-wide malloc settings for checkpoint saves.
//
// Every chunk a save writes goes through a RocksDB memtable, which allocates
// the chunk's few MiB as a block of its own. glibc serves blocks that large
// with a fresh mmap (or returns a freed one to the kernel at once), so each
// save faulted in ~100 MiB of new zeroed pages per 128 MiB of state: ~25% of a
// save's CPU time (see BENCHMARKS.md, checkpoint store).
#ifndef TANDEM_CHECKPOINT_ALLOCATOR_H_
#define TANDEM_CHECKPOINT_ALLOCATOR_H_

namespace tandem {

// Makes malloc serve blocks up to 32 MiB from its heaps and keep up to 1 GiB
// of freed memory for reuse, so that the next save's memtables reuse the last
// one's pages. Call once, early in main, before threads start: it changes
// malloc for the whole process. Returns false where glibc refused a setting
// (the process then runs as before, only its saves are slower).
bool KeepFreedMemoryForCheckpoints();

}  // namespace tandem

#endif  // TANDEM_CHECKPOINT_ALLOCATOR_H_
