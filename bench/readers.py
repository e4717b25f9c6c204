"""Stream reader and synthetic-stream throughput, side by side in one run.

    python bench/readers.py [--data ../shared/data] [--repeat 3] [--criteo-copies 100]

Reads each shared dataset fully (best of --repeat), plus a 10^6-line Criteo file made of
--criteo-copies copies of the 10k sample in a temporary directory (deleted afterwards), and
generates the synthetic stream with 10^5- and 10^7-row tables. Prints a table and writes
bench/out/readers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.readers import AvazuReader, CriteoReader, CsvReader, MovieLensReader, ReadOptions
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream

ROOT = Path(__file__).resolve().parent.parent


def timed(make: Callable[[], Iterable[SparseBatch]], repeat: int) -> tuple[int, float]:
    """(events, best seconds) of iterating a fresh stream ``repeat`` times."""
    best, events = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        events = sum(len(b) for b in make())
        best = min(best, time.perf_counter() - started)
    return events, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--criteo-copies", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    opts = ReadOptions(batch_size=args.batch_size)
    criteo = args.data / "criteo_kaggle_head10k" / "train_head10k.txt"
    avazu = args.data / "avazu_head9k" / "train_head9k.csv"
    cases: list[tuple[str, Callable[[], Iterable[SparseBatch]], int]] = [
        ("criteo 10k", lambda: CriteoReader(criteo, opts), args.repeat),
        ("avazu 9k", lambda: AvazuReader(avazu, opts), args.repeat),
        (
            "generic csv (avazu, 4 cols)",
            lambda: CsvReader(
                avazu,
                label="click",
                time="hour",
                time_format="%y%m%d%H",
                categorical=["site_id", "app_id", "device_ip", "C14"],
                options=opts,
            ),
            args.repeat,
        ),
        ("movielens-100k", lambda: MovieLensReader(args.data / "movielens_100k", opts), 3),
    ]
    for rows in (10**5, 10**7):
        cfg = SyntheticConfig(
            num_events=10**6, batch_size=args.batch_size, user_rows=rows, item_rows=rows
        )
        cases.append((f"synthetic 1M events, {rows:.0e} rows", lambda c=cfg: SyntheticStream(c), 1))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "criteo_big.txt"
        text = criteo.read_text()
        with big.open("w") as fh:
            for _ in range(args.criteo_copies):
                fh.write(text)
        cases.append((f"criteo {args.criteo_copies} x 10k", lambda: CriteoReader(big, opts), 1))
        for name, make, repeat in cases:
            events, seconds = timed(make, repeat)
            results.append({"case": name, "events": events, "seconds": seconds,
                            "events_per_s": events / seconds})  # fmt: skip
            print(f"{name:<36} {events:>10,} events {seconds:8.2f} s {events / seconds:>12,.0f} /s")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    payload = {"batch_size": args.batch_size, "machine": machine, "results": results}
    (out / "readers.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out / 'readers.json'}")


if __name__ == "__main__":
    main()
