"""Per-rank peak attention memory and bytes sent under Ulysses x Ring, against one process (CPU, gloo).

    .venv/bin/python bench/sp_memory.py                      # 8K..64K tokens, ulysses 2 x ring 2
    .venv/bin/python bench/sp_memory.py --seqs 8192,16384 --ulysses 1 --ring 4

What is measured. One causal attention call, forward and backward, at each sequence length: the
single-process run uses afnext's default backend (SDPA, i.e. aten's CPU flash kernel, whose memory
is linear in the sequence); each of the P = ulysses x ring ranks runs `sequence_parallel` on its
shard. Leaf tensors and dO exist before measuring; q, k, v are cloned from them inside the measured
call, as the decoder's RoPE makes them fresh, so the peak counts what attention really holds:
the q, k, v it saves (single process: all of them; Ulysses: its head-sharded copies, the sequence
layout being freed after the all-to-all), output, gradients, all-to-all buffers, ring receive
buffers, float32 accumulators, kernel scratch.

How it is measured: peak resident memory (VmHWM) after resetting it, minus resident memory (VmRSS)
before the call. Writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0),
so the high-water mark covers exactly the call. glibc would otherwise keep freed memory for reuse
and serve large tensors from recycled heap pages, which hides both allocations and frees from RSS;
the script therefore re-executes itself with MALLOC_MMAP_THRESHOLD_=65536, under which every
allocation of 64 KiB or more is its own mmap, paged in when written and returned to the kernel when
freed. RSS then tracks live tensor memory page by page, including memory that torch's own counters
or tracemalloc cannot see (kernel scratch allocated inside aten ops, gloo's transfer buffers).
Python's tracemalloc was rejected because torch allocates tensors with posix_memalign, outside
Python's allocator; torch has no CPU allocator statistics. A warm-up call runs first so one-time
costs are not counted: the first call of a process adds ~40 MiB (thread pools, gloo connections),
later calls at a new size measure the same as repeated calls at that size.

Bytes sent are counted where the code hands tensors to torch.distributed (`comm_stats`) and are
compared with the analytic formulas of `afnext.parallel.plan`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta

MMAP_THRESHOLD_BYTES = 65536

if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD_BYTES):
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from afnext.model.attention import AttentionMask, attend, use_backend  # noqa: E402


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_bytes(fn) -> int:
    """Peak resident memory added while fn() runs (see the module docstring)."""
    gc.collect()
    base = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return _status_bytes("VmHWM") - base


def _inputs(seq, heads, kv_heads, head_dim, index=None):
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, h, seq, head_dim, generator=g) for h in (heads, kv_heads, kv_heads, heads))
    if index is not None:
        q, k, v, dout = (x[:, :, index].contiguous() for x in (q, k, v, dout))
    return [x.requires_grad_() for x in (q, k, v)] + [dout]


class Wire:
    """Bytes handed to torch.distributed, counted by intercepting its calls (independent of `comm_stats`).

    all_to_all_single: the input minus the slice that stays home; batch_isend_irecv: every isend.
    `phase` is set by the caller ("fwd" before the forward, "bwd" before the backward).
    """

    def __init__(self):
        import torch.distributed as dist

        self.bytes: dict[str, int] = {}
        self.phase = "fwd"
        a2a, batch = dist.all_to_all_single, dist.batch_isend_irecv

        def all_to_all_single(output, input, *args, group=None, **kw):
            n = dist.get_world_size(group)
            self._add("ulysses", input.numel() * input.element_size() * (n - 1) // n)
            return a2a(output, input, *args, group=group, **kw)

        def batch_isend_irecv(ops):
            self._add("ring", sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend))
            return batch(ops)

        dist.all_to_all_single, dist.batch_isend_irecv = all_to_all_single, batch_isend_irecv

    def _add(self, kind, n):
        key = f"{kind}/{self.phase}"
        self.bytes[key] = self.bytes.get(key, 0) + n


def _fwd_bwd(q, k, v, dout, wire: Wire | None = None):
    # Gradients of the previous call are dropped here, before `peak_bytes` reads its baseline: freed
    # inside the measured window they would offset the new ones and hide up to dq + dk + dv.
    for x in (q, k, v):
        x.grad = None

    def run():
        if wire is not None:
            wire.phase = "fwd"
        # As in the decoder, attention gets q, k, v freshly made (there by RoPE): whatever the
        # backend keeps of them counts, and what it drops (Ulysses drops the sequence-layout copies
        # after its all-to-all) is freed.
        out = attend(q.clone(), k.clone(), v.clone(), AttentionMask(causal=True))
        if wire is not None:
            wire.phase = "bwd"
        out.backward(dout)
        del out
    return run


def single_process(seqs, args) -> dict:
    torch.set_num_threads(args.threads)
    results = {}
    with use_backend("sdpa"):
        for i, seq in enumerate(seqs):
            q, k, v, dout = _inputs(seq, args.heads, args.kv_heads, args.head_dim)
            if i == 0:
                _fwd_bwd(q, k, v, dout)()  # warm-up (see the module docstring)
            t0 = time.perf_counter()
            peak = peak_bytes(_fwd_bwd(q, k, v, dout))
            results[seq] = {"peak": peak, "seconds": time.perf_counter() - t0}
            del q, k, v, dout
    return results


def _worker(rank, world, port, seqs, args, out_dir):
    import torch.distributed as dist

    from afnext.parallel import comm_stats, init_sp_groups, sequence_parallel, token_index

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=30))
    groups = init_sp_groups(args.ulysses, args.ring)
    wire = Wire()
    results = {}
    with sequence_parallel(groups):
        for i, seq in enumerate(seqs):
            q, k, v, dout = _inputs(seq, args.heads, args.kv_heads, args.head_dim, token_index(seq, groups))
            if i == 0:
                _fwd_bwd(q, k, v, dout)()  # warm-up (see the module docstring)
            dist.barrier()
            comm_stats.reset()
            wire.bytes.clear()
            t0 = time.perf_counter()
            peak = peak_bytes(_fwd_bwd(q, k, v, dout, wire))
            seconds = time.perf_counter() - t0
            counted = {f"{kind}/{phase}": n for (kind, phase), n in comm_stats.bytes.items()}
            results[seq] = {"peak": peak, "seconds": seconds, "sent": dict(wire.bytes), "counted": counted}
            del q, k, v, dout
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def analytic_sent(seq, args) -> dict:
    from afnext.parallel.plan import ring_bytes, ulysses_bytes
    from afnext.parallel.ulysses import kv_repeat_factor

    hkv_sent = args.kv_heads * kv_repeat_factor(args.heads, args.kv_heads, args.ulysses)
    t = seq // (args.ulysses * args.ring)
    u = ulysses_bytes(t, args.heads, hkv_sent, args.head_dim, 4, args.ulysses)
    r_fwd, r_bwd = ring_bytes(seq, 1, hkv_sent, args.head_dim, 4, args.ulysses, args.ring)
    return {"ulysses/fwd": u, "ulysses/bwd": u, "ring/fwd": r_fwd, "ring/bwd": r_bwd}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="8192,16384,32768,65536", help="comma-separated sequence lengths")
    ap.add_argument("--ulysses", type=int, default=2)
    ap.add_argument("--ring", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (same for both runs)")
    args = ap.parse_args(argv)
    seqs = [int(s) for s in args.seqs.split(",")]
    world = args.ulysses * args.ring
    print(f"causal attention fwd+bwd, fp32, B=1, {args.heads} q / {args.kv_heads} kv heads x {args.head_dim}; "
          f"P = ulysses {args.ulysses} x ring {args.ring} = {world} ranks; {args.threads} thread(s) per process")
    print(f"memory: peak RSS added by the call (VmHWM after reset - VmRSS before), MALLOC_MMAP_THRESHOLD_="
          f"{os.environ['MALLOC_MMAP_THRESHOLD_']}")
    t0 = time.perf_counter()
    single = single_process(seqs, args)
    with tempfile.TemporaryDirectory() as out_dir:
        import torch.multiprocessing as mp

        mp.spawn(_worker, args=(world, _free_port(), seqs, args, out_dir), nprocs=world, join=True)
        ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(world)]
    print()
    print("ratio = max per-rank peak / single-process peak; x ideal = ratio x P (1.0 would be exactly 1/P)")
    print(f"{'seq':>7} {'single MiB':>11} {'per-rank MiB (min..max)':>24} {'ratio':>7} {'1/P':>6} {'x ideal':>8} "
          f"{'single s':>9} {'SP s':>6}")
    for seq in seqs:
        peaks = [r[str(seq)]["peak"] for r in ranks]
        one = single[seq]["peak"]
        print(f"{seq:>7} {one / 2**20:>11.1f} {min(peaks) / 2**20:>11.1f} .. {max(peaks) / 2**20:>9.1f} "
              f"{max(peaks) / one:>7.3f} {1 / world:>6.3f} {world * max(peaks) / one:>8.2f} {single[seq]['seconds']:>9.1f} "
              f"{max(r[str(seq)]['seconds'] for r in ranks):>6.1f}")
    print()
    print("bytes sent per rank: measured = intercepted torch.distributed calls (max over ranks); "
          "comm_stats = the code's own counters; analytic = afnext.parallel.plan formulas")
    print(f"{'seq':>7} {'kind/phase':<12} {'measured':>14} {'comm_stats':>14} {'analytic':>14} {'diff':>7}")
    worst = 0.0
    for seq in seqs:
        want = analytic_sent(seq, args)
        for key, expect in want.items():
            got = max(r[str(seq)]["sent"].get(key, 0) for r in ranks)
            low = min(r[str(seq)]["sent"].get(key, 0) for r in ranks)
            counted = max(r[str(seq)]["counted"].get(key, 0) for r in ranks)
            if got != low:
                print(f"  note: ranks differ for {key}: {low}..{got}")
            diff = 0.0 if expect == got == 0 else abs(got - expect) / max(expect, 1)
            worst = max(worst, diff)
            print(f"{seq:>7} {key:<12} {got:>14,} {counted:>14,} {expect:>14,} {100 * diff:>6.2f}%")
    print(f"\nworst measured-vs-analytic difference {100 * worst:.2f}% (target < 10%); "
          f"total {time.perf_counter() - t0:.0f} s")
    return 0 if worst < 0.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
