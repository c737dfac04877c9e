#!/usr/bin/env python3
"""What one durable append costs on this disk, four ways, side by side.

The audit ledger's sequencer makes one synchronous write per group commit (docs/AUDIT.md). This
measures, alternating rounds, an append of SIZE bytes to a growing file made durable by
  write+fdatasync     pwrite through the page cache, then fdatasync (the ledger's fallback)
  write O_DSYNC       pwrite on a file opened O_DSYNC
  O_DIRECT|O_DSYNC    the last 4 KiB block(s) rewritten from an aligned buffer, growing the file
  O_DIRECT, prezeroed the same writes into a file whose blocks were written (zeros) and synced
                      beforehand: an overwrite changes no metadata (the ledger's way)
and prints the median over rounds of the p50 and p99 time of one append and of the CPU it cost
(user + system of this process per append; Python's own overhead, a few µs, is in every
column alike). The O_DIRECT case writes a prepared buffer: the copy of the tail and frames into
it and the zero fill that the ledger also does per batch are not timed, and a short write is
not retried.

Usage: bench/sync_cost.py [--count N] [--size BYTES] [--rounds R] [--dir DIR]
The files go to DIR (default: a temp dir under /var/tmp, on the disk data_dir usually lives on)
and are removed afterwards.
"""
import argparse
import mmap
import os
import resource
import shutil
import tempfile
import time

BLOCK = 4096


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path, flags, count, size, direct=False, fdatasync=False, prezero=False):
    if prezero:
        # Written and synced before the clock starts, as the ledger writes zeros ahead of its
        # records (1 MiB at a time; that write itself is not timed here).
        with open(path, "wb") as file:
            file.write(bytes((count * size // BLOCK + 2) * BLOCK))
            file.flush()
            os.fsync(file.fileno())
    fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if prezero else os.O_TRUNC) | flags, 0o600)
    aligned = mmap.mmap(-1, (size // BLOCK + 2) * BLOCK)  # page-aligned, as O_DIRECT needs
    aligned.write(b"x" * len(aligned))
    data = b"y" * size
    times = []
    offset = 0
    started = cpu_seconds()
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            if direct:
                first = offset - offset % BLOCK
                end = -(-(offset + size) // BLOCK) * BLOCK
                os.pwritev(fd, [memoryview(aligned)[: end - first]], first)
            else:
                os.pwrite(fd, data, offset)
                if fdatasync:
                    os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
            offset += size
    finally:
        os.close(fd)
        os.unlink(path)
    cpu = cpu_seconds() - started
    times.sort()
    return times[len(times) // 2] * 1e3, times[len(times) * 99 // 100] * 1e3, cpu / count * 1e6


def main():
    parser = argparse.ArgumentParser(
        description="Cost of one durable append: write+fdatasync vs O_DSYNC vs O_DIRECT|O_DSYNC, growing or prezeroed."
    )
    parser.add_argument("--count", type=int, default=800, help="appends per run (default 800)")
    parser.add_argument("--size", type=int, default=1500, help="bytes per append (default 1500)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds over the four ways (default 4)")
    parser.add_argument("--dir", help="where the test files go (default: a temp dir in /var/tmp)")
    args = parser.parse_args()
    if args.count < 1 or args.size < 1 or args.rounds < 1:
        parser.error("--count, --size and --rounds must be at least 1")
    work = tempfile.mkdtemp(prefix="postern-sync-cost.", dir=args.dir or "/var/tmp")
    ways = [
        ("write+fdatasync", 0, False, True),
        ("write O_DSYNC", os.O_DSYNC, False, False),
        ("O_DIRECT|O_DSYNC", os.O_DIRECT | os.O_DSYNC, True, False),
        ("O_DIRECT, prezeroed", os.O_DIRECT | os.O_DSYNC, True, False, True),
    ]
    results = {name: [] for name, *_ in ways}
    try:
        for _ in range(args.rounds):
            for name, flags, direct, fdatasync, *prezero in ways:
                path = os.path.join(work, "append.bin")
                try:
                    results[name].append(
                        measure(path, flags, args.count, args.size, direct, fdatasync, bool(prezero))
                    )
                except OSError as error:
                    results[name].append(None)
                    print(f"{name}: {error} (this filesystem may refuse O_DIRECT)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.count} appends of {args.size} bytes per run, {args.rounds} rounds, in {args.dir or '/var/tmp'}")
    print(f"{'way':20s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU µs':>8s}   (median over rounds)")
    for name, runs in results.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        med = [sorted(col)[len(col) // 2] for col in zip(*runs)]
        print(f"{name:20s} {med[0]:8.3f} {med[1]:8.3f} {med[2]:8.0f}")


if __name__ == "__main__":
    main()
