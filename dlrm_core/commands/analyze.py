"""``liveupdate analyze-gradients``: how low-rank is a training window's embedding update?

Trains the DLRM on a stream (a file of any reader format: MovieLens, Criteo, Avazu, a csv log)
for a warm-up, then over a window, and reports per table the share of the update's variance in
its top principal components, for the summed gradient and the applied update, under SGD and
Adagrad, for each embedding dim.
Prints a table; writes ``gradient_analysis_<format>.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlrm_core.analysis import CLAIM_SHARE, RunConfig, analyze, n_components
from dlrm_core.commands import stream_args
from dlrm_core.commands.stream_args import bounded
from dlrm_core.readers import READER_FORMATS


# Learning rates: the best window AUC of a small sweep (SGD 0.1/1/3, Adagrad 0.01/0.02/0.05)
# at D=16; see docs/RESULTS.md.
@dataclass(frozen=True)
class FormatDefaults:
    sgd_lr: float
    adagrad_lr: float
    bottom_hidden: tuple[int, ...]
    top_hidden: tuple[int, ...]


DEFAULTS = {
    "movielens": FormatDefaults(1.0, 0.05, (64,), (64, 32)),
    # The reference Criteo MLPs (13-512-256-64-D, 512-256-1).
    "criteo": FormatDefaults(0.1, 0.01, (512, 256, 64), (512, 256)),
}
# Other formats (Avazu, csv logs): Criteo's rates, not tuned for them, with MovieLens's MLPs.
UNTUNED = FormatDefaults(0.1, 0.01, (64,), (64, 32))


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        msg = f"--dims must be comma-separated integers: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not dims or any(not 1 <= d <= 1024 for d in dims):
        raise argparse.ArgumentTypeError("--dims must be in [1, 1024]")
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stream_args.add_stream_arguments(parser, READER_FORMATS, batch_size=256)
    parser.add_argument("--dims", type=_dims, default=(16, 64, 128), help="e.g. 16,64,128")
    parser.add_argument("--out", type=Path, default=Path("var/analysis"))
    share = bounded(float, 0.0, 1.0)
    parser.add_argument("--warmup", type=share, default=0.5, help="share of batches before")
    parser.add_argument("--window", type=share, default=0.3, help="share of batches in window")
    parser.add_argument("--sgd-lr", type=bounded(float, 1e-9, 10.0), default=None)
    parser.add_argument("--adagrad-lr", type=bounded(float, 1e-9, 10.0), default=None)
    parser.add_argument("--seed", type=bounded(int, 0, 2**32 - 1), default=0)


def _markdown(records: list[dict], header: str) -> str:
    lines = [header, ""]
    lines.append(
        "| D | optimizer | window AUC | table | rows | grad top-5% | grad k80 | "
        "update top-5% | update k80 |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rec in records:
        for tb in rec["tables"]:
            g, u = tb["grad"], tb["update"]
            flag = " (rows < D)" if g["rows"] < g["dim"] else ""
            lines.append(
                f"| {rec['dim']} | {rec['optimizer']} | {rec['window_auc']:.4f} | "
                f"{tb['table']} | {g['rows']}{flag} | {g['top']['5%']:.3f} | {g['k80']} | "
                f"{u['top']['5%']:.3f} | {u['k80']} |"
            )
    lines += ["", "Summary over tables with rows >= D (claim: top-5% components >= 80%):", ""]
    lines.append(
        "| D | optimizer | k at 5% | tables | claim holds (grad) | claim holds (update) | "
        "median grad top-5% | median update top-5% | median update k80 / D |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in summarize(records):
        lines.append(
            f"| {s['dim']} | {s['optimizer']} | {s['k']} | {s['tables']} | {s['holds_grad']} | "
            f"{s['holds_update']} | {s['median_grad_top5']:.3f} | "
            f"{s['median_update_top5']:.3f} | {s['median_update_k80_share']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(records: list[dict]) -> list[dict]:
    """Per (D, optimizer): over tables with rows >= D, how often the claim holds, medians."""
    out = []
    for rec in records:
        full = [tb for tb in rec["tables"] if tb["grad"]["rows"] >= rec["dim"]]
        out.append(
            {
                "dim": rec["dim"],
                "optimizer": rec["optimizer"],
                "k": n_components(0.05, rec["dim"]),
                "tables": len(full),
                "holds_grad": sum(tb["grad"]["top"]["5%"] >= CLAIM_SHARE for tb in full),
                "holds_update": sum(tb["update"]["top"]["5%"] >= CLAIM_SHARE for tb in full),
                "median_grad_top5": _median([tb["grad"]["top"]["5%"] for tb in full]),
                "median_update_top5": _median([tb["update"]["top"]["5%"] for tb in full]),
                "median_update_k80_share": _median(
                    [tb["update"]["k80"] / rec["dim"] for tb in full]
                ),
            }
        )
    return out


def _finite(value: Any) -> Any:
    """The payload with nan (e.g. the AUC of a diverged run) as null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    torch.sparse.check_sparse_tensor_invariants.disable()  # explicit: silences torch's warning
    defaults = DEFAULTS.get(args.format, UNTUNED)
    sgd_lr = defaults.sgd_lr if args.sgd_lr is None else args.sgd_lr
    adagrad_lr = defaults.adagrad_lr if args.adagrad_lr is None else args.adagrad_lr
    try:
        cfg = RunConfig(
            dims=args.dims,
            optimizers=(("sgd", sgd_lr), ("adagrad", adagrad_lr)),
            warmup=args.warmup,
            window=args.window,
            bottom_hidden=defaults.bottom_hidden,
            top_hidden=defaults.top_hidden,
            seed=args.seed,
        )
        reader = stream_args.open_stream(args)
        stream_args.count_usable(reader, needed=2 * args.batch_size)  # two batches at least
        batches = list(reader)
    except (ValueError, OSError) as exc:
        print(f"liveupdate analyze-gradients: error: {stream_args.one_line(exc)}", file=sys.stderr)
        return 2
    started = time.perf_counter()

    def progress(rec: dict) -> None:
        print(
            f"  D={rec['dim']} {rec['optimizer']}: window AUC {rec['window_auc']:.4f} "
            f"({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    records = analyze(batches, reader.schema, cfg, progress)
    elapsed = time.perf_counter() - started
    header = (
        f"Gradient low-rank analysis: {args.format} {args.data} "
        f"({reader.stats.events} events, {reader.stats.malformed} malformed lines skipped), "
        f"warm-up {records[0]['warmup_events']} events, window {records[0]['window_events']} "
        f"events, batch {args.batch_size}, SGD lr {sgd_lr}, Adagrad lr {adagrad_lr}, "
        f"seed {args.seed}; {elapsed:.0f} s on {platform.machine()} with "
        f"{torch.get_num_threads()} torch threads"
    )
    text = _markdown(records, header)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gradient_analysis_{args.format}"
    payload = {
        "command": "liveupdate analyze-gradients " + " ".join(sys.argv[2:]),
        "header": header,
        "summary": summarize(records),
        "runs": records,
    }
    stem.with_suffix(".json").write_text(json.dumps(_finite(payload), indent=1, allow_nan=False))
    stem.with_suffix(".md").write_text(text)
    print(f"wrote {stem}.json and {stem}.md")
    return 0
