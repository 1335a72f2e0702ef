"""A small heterogeneous pipeline on a local pilot.

    generate orders (2 ranks) --+
                                +--> join + sort (3 ranks) --> revenue per region (2 ranks) --> report (python app)
    generate customers (2 ranks)+

Tables pass between stages as Parquet under the run directory; each stage
runs on its own rank count with a communicator of its own, all inside one
Radical Pilot pilot.  Run with ``make demo`` or ``python workflows/demo.py``.
"""
from __future__ import annotations

import argparse
import time

import parsl
from parsl import python_app

from parsl_rcylon import RadicalCylonExecutor, TableRef, cylon_app


@cylon_app(ranks=2)
def generate_orders(ctx, rows: int, customers: int, seed: int = 1):
    # Imports inside apps: functions defined in a script travel by value.
    import numpy as np
    import pyarrow as pa

    lo, hi = rows * ctx.rank // ctx.size, rows * (ctx.rank + 1) // ctx.size
    rng = np.random.default_rng([seed, ctx.rank])
    return pa.table({
        "order_id": np.arange(lo, hi, dtype=np.int64),
        "customer": rng.integers(0, customers, hi - lo),
        "amount": rng.gamma(2.0, 50.0, hi - lo).round(2),
    })


@cylon_app(ranks=2)
def generate_customers(ctx, customers: int, seed: int = 2):
    import numpy as np
    import pyarrow as pa

    lo, hi = customers * ctx.rank // ctx.size, customers * (ctx.rank + 1) // ctx.size
    rng = np.random.default_rng([seed, ctx.rank])
    regions = np.array(["north", "south", "east", "west"])
    return pa.table({
        "customer": np.arange(lo, hi, dtype=np.int64),
        "region": regions[rng.integers(0, 4, hi - lo)],
    })


@cylon_app(ranks=3)
def join_and_sort(ctx, orders, customers):
    joined = ctx.join(orders, customers, on="customer", how="inner")
    return ctx.sort(joined, by=[("amount", "descending"), ("order_id", "ascending")])


@cylon_app(ranks=2)
def revenue_by_region(ctx, orders):
    return ctx.groupby(orders, ["region"], [("amount", "sum"), ("order_id", "count"), ("amount", "mean")])


@python_app
def report(sorted_orders: TableRef, regions: TableRef) -> dict:
    import pyarrow.compute as pc

    top = sorted_orders.read(columns=["order_id", "amount", "region"]).slice(0, 3).to_pylist()
    amounts = sorted_orders.read(columns=["amount"])["amount"]
    by_region = regions.read().sort_by("region").to_pylist()
    return {
        "orders": sorted_orders.num_rows,
        "partitions": sorted_orders.num_partitions,
        "sorted_descending": bool(pc.all(pc.greater_equal(amounts[:-1], amounts[1:])).as_py()),
        "top": top,
        "regions": by_region,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders to generate")
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--run-dir", default="runinfo")
    parser.add_argument("--no-progress", action="store_true", help="no live view or summary per app")
    args = parser.parse_args()

    t0 = time.time()
    executor = RadicalCylonExecutor(label="rcylon", progress=not args.no_progress)
    config = parsl.Config(executors=[executor], run_dir=args.run_dir, strategy="none", initialize_logging=True)
    with parsl.load(config) as dfk:
        executor = dfk.executors["rcylon"]
        print(f"pilot ready in {time.time() - t0:.1f} s: {executor.status()}", flush=True)
        t1 = time.time()
        orders = generate_orders(args.rows, args.customers)
        customers = generate_customers(args.customers)
        ordered = join_and_sort(orders, customers)
        regions = revenue_by_region(ordered)
        result = report(ordered, regions).result()
        print(f"pipeline ran in {time.time() - t1:.1f} s", flush=True)
    print(f"{result['orders']:,} orders joined and sorted in {result['partitions']} partitions; "
          f"sorted by amount: {result['sorted_descending']}")
    print("largest orders:", result["top"])
    for row in result["regions"]:
        print(f"  {row['region']:>5}: {row['order_id_count']:>8,} orders, revenue {row['amount_sum']:>14,.2f}, "
              f"mean {row['amount_mean']:.2f}")
    print(f"total {time.time() - t0:.1f} s (run directory: {args.run_dir})")


if __name__ == "__main__":
    main()
