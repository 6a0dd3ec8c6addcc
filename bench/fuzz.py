"""Fuzz ``kernelscope inspect`` with mutated models: every run must end cleanly.

    python bench/fuzz.py --cases 10000 [--seed 0] [--attack-every 4] [--save-dir fuzz-crashes]

Case ``i`` mutates a small valid ONNX classifier (tests/builders.py ``conv_classifier``) with a seeded
``random.Random(seed + i)`` (tests/mutations.py: protobuf-level changes to dims, types, attributes, op types,
names, opsets, nodes, initializers, tensor data and metadata, or raw byte flips / inserts / deletes /
truncations), writes it to a temporary file and runs ``main(["inspect", ...])`` in-process on a tiny
matching .npz, with the FGSM attack on for every ``--attack-every``-th case.

The property: exit code 0, 1 or 2, never a traceback, exactly one ``kernelscope: error:`` line on failure.
It prints the number of cases, a histogram of exit codes, the count of errors that only the CLI's
last-resort handler caught ("unforeseen"), and every crash (the input is kept in ``--save-dir``). Exits 1
on any crash. Reproduce one case with ``--cases 1 --seed N``.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from builders import conv_classifier, random_npz  # noqa: E402
from mutations import RandomChooser, inspect_argv, mutate, run_cli  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="number of mutated models to run")
    parser.add_argument("--seed", type=int, default=0, help="case i uses random.Random(seed + i)")
    parser.add_argument("--attack-every", type=int, default=4, help="run the FGSM attack on every N-th case")
    parser.add_argument("--save-dir", type=Path, default=None, help="keep crashing models here")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit of this process")
    parser.add_argument("--report-every", type=int, default=500, help="print a progress line every N cases")
    args = parser.parse_args()
    if args.memory_gb > 0:
        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)

    base = conv_classifier(out_channels=4, classes=4).SerializeToString()
    codes: collections.Counter[str] = collections.Counter()
    unforeseen: collections.Counter[str] = collections.Counter()
    crashes: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kernelscope-fuzz-") as folder:
        work = Path(folder)
        data = random_npz(work / "data.npz", n=12, size=8, channels=3, classes=4)
        model = work / "model.onnx"
        for i in range(args.cases):
            seed = args.seed + i
            mutated, steps = mutate(base, RandomChooser(seed))
            model.write_bytes(mutated)
            outcome = run_cli(inspect_argv(model, data, attack=i % args.attack_every == 0))
            codes[str(outcome.code)] += 1
            if outcome.unforeseen:
                unforeseen[outcome.stderr[:160]] += 1
            if outcome.crash is not None:
                crashes.append(f"seed {seed} ({'+'.join(steps)}): {outcome.crash}: {outcome.stderr[-300:]!r}")
                if args.save_dir is not None:
                    args.save_dir.mkdir(parents=True, exist_ok=True)
                    (args.save_dir / f"crash-{seed}.onnx").write_bytes(mutated)
            for name in os.listdir(work):  # a run must not leave files behind
                if name not in ("data.npz", "model.onnx"):
                    crashes.append(f"seed {seed}: left {name} behind")
            if args.report_every and (i + 1) % args.report_every == 0:
                rate = (i + 1) / (time.perf_counter() - start)
                print(f"{i + 1} cases, {rate:.1f}/s, exit codes {dict(codes)}, crashes {len(crashes)}", flush=True)
    seconds = time.perf_counter() - start
    print(f"cases: {args.cases} in {seconds:.0f} s (seed {args.seed}, attack on every {args.attack_every})")
    print("exit codes: " + ", ".join(f"{code}: {count}" for code, count in sorted(codes.items())))
    print(f"unforeseen errors (clean, but caught only by the CLI's last resort): {sum(unforeseen.values())}")
    for message, count in unforeseen.most_common(20):
        print(f"  {count:5d}  {message}")
    print(f"crashes: {len(crashes)}")
    for line in crashes[:50]:
        print(f"  {line}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
