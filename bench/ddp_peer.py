#!/usr/bin/python3
# The peer users would pick instead of tandem (issue 3, benchmarks 3 and 4):
# PyTorch DistributedDataParallel over gloo, one rank per "cloud", on the
# same Fashion-MNIST CNN (worker/models.cc), the same data order
# (worker/sampler.cc), global batch, SGD and learning rate as tandem's runs.
#
# With --proxy, every byte between the two ranks crosses tandem-wan-proxy:
# gloo publishes each rank's listening address in the rendezvous store; a
# store wrapper puts a proxy in front of each published address and
# publishes the proxy's instead (see ProxiedStore). The rendezvous store
# itself (a few hundred bytes, once) stays on loopback.
#
# Needs Debian's python3-torch: run with /usr/bin/python3.
#   /usr/bin/python3 bench/ddp_peer.py --hook fp16 --steps 200 --global-batch 512 \
#       [--proxy build/bin/tandem-wan-proxy --wan-delay 25 --wan-rate 100] [--init init.pt]
# Prints one JSON line (rank 0): steps, step_s, bytes_per_step (sent by one
# rank, measured at the proxy), test_accuracy, ...
import argparse
import ctypes
import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

MASK = (1 << 64) - 1
MEAN, STD = 0.2860, 0.3530


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def bounded(state, bound):
    # Lemire's method, as worker/sampler.cc.
    state, x = splitmix64(state)
    m = x * bound
    low = m & MASK
    if low < bound:
        threshold = ((1 << 64) - bound) % bound
        while low < threshold:
            state, x = splitmix64(state)
            m = x * bound
            low = m & MASK
    return state, m >> 64


def epoch_order(n, seed, epoch):
    order = list(range(n))
    state = (seed ^ ((0xA0761D6478BD642F * (epoch + 1)) & MASK)) & MASK
    for i in range(n, 1, -1):
        state, j = bounded(state, i)
        order[i - 1], order[j] = order[j], order[i - 1]
    return order


def rank_slice(batch_size, rank, ranks):
    base, extra = divmod(batch_size, ranks)
    begin = rank * base + min(rank, extra)
    return begin, begin + base + (1 if rank < extra else 0)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.copy()).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


class Cnn(nn.Module):  # worker/models.cc CnnImpl, same names and shapes
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc1(h.flatten(1)))
        return self.fc2(h)


def start_proxy(binary, target_port, listen_port, delay_ms, rate_mbit):
    argv = [binary, "--listen", f"127.0.0.1:{listen_port}", "--target",
            f"127.0.0.1:{target_port}", "--control", "127.0.0.1:0"]
    if delay_ms > 0:
        argv += ["--delay-ms", str(delay_ms)]
    if rate_mbit > 0:
        argv += ["--rate-mbit", str(rate_mbit)]
        if delay_ms > 0:  # as coordinator/local_train.cc: twice the BDP, at least 4 MiB
            argv += ["--buffer-bytes", str(max(4 << 20, int(2 * rate_mbit * 1e6 / 8 * delay_ms / 1000)))]
    # The proxy dies with this rank, however the rank ends.
    libc = ctypes.CDLL(None, use_errno=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: libc.prctl(1, signal.SIGTERM))  # PR_SET_PDEATHSIG
    control = None
    for line in proc.stdout:
        if line.startswith("control on "):
            control = int(line.rsplit(":", 1)[1])
            break
    if control is None:
        raise RuntimeError("tandem-wan-proxy did not start: " + " ".join(argv))
    return proc, control


def proxy_stats(control_port):
    with socket.create_connection(("127.0.0.1", control_port)) as s:
        s.sendall(b"stats\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


class ProxiedStore(dist.Store):
    """Wraps the rendezvous store; rewrites gloo's published addresses.

    gloo's connectFullMesh publishes, under key "<rank>", the sockaddr (and,
    in newer gloo, a sequence number) of the socket on which this rank waits
    for each peer. The pair whose own address compares higher connects to the
    other. Each rank's published address is replaced by a proxy in front of
    it; the proxies' ports are chosen so that every rank still agrees on who
    connects (rank 0's proxy sorts below every ephemeral port, rank 1's above,
    in network and in host byte order), so rank 1 connects, through rank 0's
    proxy.
    """

    LOW_PORT = 0x0101   # 257: below any ephemeral port either way round
    HIGH_PORT = 0xFEFE  # 65278: above

    def __init__(self, inner, rank, binary, delay_ms, rate_mbit):
        super().__init__()
        self.inner, self.rank, self.binary = inner, rank, binary
        self.delay_ms, self.rate_mbit = delay_ms, rate_mbit
        self.proxies = []  # (process, control port)

    def _rewrite(self, value):
        data = bytearray(value)
        family = struct.unpack_from("<H", data, 0)[0] if len(data) >= 8 else None
        if family != socket.AF_INET or len(data) not in (128, 136):
            return value
        port = struct.unpack_from(">H", data, 2)[0]
        listen = self.LOW_PORT if self.rank == 0 else self.HIGH_PORT
        self.proxies.append(start_proxy(self.binary, port, listen, self.delay_ms, self.rate_mbit))
        struct.pack_into(">H", data, 2, listen)
        data[4:8] = socket.inet_aton("127.0.0.1")
        return bytes(data)

    def set(self, key, value):
        if isinstance(value, str):
            value = value.encode()
        if key.rsplit("/", 1)[-1] == str(self.rank):
            value = self._rewrite(value)
        return self.inner.set(key, value)

    def get(self, key):
        return self.inner.get(key)

    def add(self, key, amount):
        return self.inner.add(key, amount)

    def compare_set(self, key, expected, desired):
        return self.inner.compare_set(key, expected, desired)

    def wait(self, keys, timeout=None):
        return self.inner.wait(keys) if timeout is None else self.inner.wait(keys, timeout)

    def check(self, keys):
        return self.inner.check(keys)

    def delete_key(self, key):
        return self.inner.delete_key(key)

    def num_keys(self):
        return self.inner.num_keys()

    def set_timeout(self, timeout):
        return self.inner.set_timeout(timeout)


def run_rank(args):
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rank, world = args.rank, 2
    inner = dist.TCPStore("127.0.0.1", args.store_port, world, rank == 0,
                          timedelta(seconds=120))
    store = inner
    if args.proxy:
        store = ProxiedStore(inner, rank, args.proxy, args.wan_delay, args.wan_rate)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))

    model = Cnn()
    if args.init:
        model.load_state_dict(torch.load(args.init))
    if args.hook == "powersgd":
        # One bucket: with several, the PowerSGD hook's chained allreduces of
        # different buckets can reach gloo in another order on each rank
        # (gloo then fails: "op.preamble.length <= op.nbytes").
        dist._DEFAULT_FIRST_BUCKET_BYTES = 1 << 30
    ddp = nn.parallel.DistributedDataParallel(
        model, bucket_cap_mb=1024 if args.hook == "powersgd" else 25)
    if args.hook == "fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif args.hook == "powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=args.rank_r,
            start_powerSGD_iter=2, min_compression_rate=2, use_error_feedback=True,
            warm_start=True, random_seed=args.seed)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)

    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "test")
    n = x_train.shape[0]
    steps_per_epoch = (n + args.global_batch - 1) // args.global_batch
    total = args.steps if args.steps else steps_per_epoch * args.epochs
    orders = {}
    cursor = 0
    # Time and bytes count from step `warmup` on: the PowerSGD hook runs
    # plain allreduces before its start_powerSGD_iter (2); the other hooks
    # are measured the same way.
    warmup = min(2, total - 1)
    for step in range(total):
        if step == warmup:
            dist.barrier()
            stats_before = [proxy_stats(c) for _, c in store.proxies] if args.proxy else []
            start = time.perf_counter()
        epoch = cursor // n
        if epoch not in orders:
            orders = {epoch: torch.tensor(epoch_order(n, args.seed, epoch))}
        begin = cursor % n
        batch = orders[epoch][begin:min(begin + args.global_batch, n)]
        size = batch.numel()
        lo, hi = rank_slice(size, rank, world)
        idx = batch[lo:hi]
        opt.zero_grad(set_to_none=False)
        # tandem divides each rank's loss sum by the global batch and sums
        # over ranks; DDP averages over ranks, hence the factor world.
        loss = F.cross_entropy(ddp(x_train[idx]), y_train[idx], reduction="sum") * world / size
        loss.backward()
        opt.step()
        cursor += size
    elapsed = time.perf_counter() - start
    measured = total - warmup
    sent = 0
    if args.proxy:
        for (proc, control), before in zip(store.proxies, stats_before):
            after = proxy_stats(control)
            for direction in ("client_to_target", "target_to_client"):
                sent += after[direction]["bytes"] - before[direction]["bytes"]
    sent_all = torch.tensor([sent], dtype=torch.float64)
    dist.all_reduce(sent_all)

    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
                      for i in range(0, x_test.shape[0], 1000))
    if rank == 0:
        print(json.dumps({
            "hook": args.hook, "steps": total, "global_batch": args.global_batch,
            "measured_steps": measured, "train_s": elapsed, "step_s": elapsed / measured,
            # What one rank sends per step (the two directions' mean), as
            # tandem's wan_bytes_sent counts what one leader sends.
            "bytes_per_step": sent_all.item() / 2 / measured if args.proxy else None,
            "bytes_source": "proxy" if args.proxy else None,
            "test_accuracy": correct / x_test.shape[0],
            "wan_delay_ms": args.wan_delay, "wan_rate_mbit": args.wan_rate}), flush=True)
    dist.destroy_process_group()
    for proc, _ in getattr(store, "proxies", []):
        proc.terminate()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hook", choices=["none", "fp16", "powersgd"], default="none")
    p.add_argument("--steps", type=int, default=0, help="0: --epochs epochs")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rank-r", type=int, default=4, help="PowerSGD rank")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--init", help="state_dict to start from (e.g. the one tandem gets with --init)")
    p.add_argument("--proxy", help="tandem-wan-proxy binary: route gloo's traffic through it")
    p.add_argument("--wan-delay", type=int, default=0, help="one-way delay, ms")
    p.add_argument("--wan-rate", type=int, default=0, help="Mbit/s")
    p.add_argument("--write-init", help="write the seeded initial state_dict here and exit")
    p.add_argument("--rank", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--store-port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_init:
        torch.manual_seed(args.seed)
        torch.save(Cnn().state_dict(), args.write_init)
        return
    if args.rank >= 0:
        run_rank(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + ["--store-port", str(port)]
    procs = [subprocess.Popen(base + ["--rank", str(r)]) for r in (0, 1)]
    codes = [proc.wait() for proc in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
