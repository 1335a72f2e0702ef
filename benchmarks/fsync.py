"""What ``fsync=True`` costs the table hand-off: write with and without it, side by side.

    python benchmarks/fsync.py --out DIR [--rows 2000000,8000000] [--ranks 1,2] [--repeats 9] [--data-dir D]

For each row count and rank count, one ``mpiexec`` writes the benchmark table
of ``benchmarks/handoff.py`` with ``publish_result`` (default Parquet
options), alternating ``fsync`` off and on, and reads it back with
``resolve_arguments`` on as many ranks; each phase is timed inside the ranks
between barriers.  Before every write the page cache's dirty data is flushed
(``os.sync``, not timed), so that no write pays for the one before it.  The
hand-off is write + read; fsync's cost is the difference of the median writes
over the median hand-off without it (reads, from the page cache either way,
are the noisier phase; the full hand-off ratio is reported too).  Results:
DIR/fsync.json, every sample kept.

The files are written to a local disk here; on a parallel filesystem an
fsync waits for the storage servers, and the cost is that filesystem's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handoff import make_rows, med, timed_handoff  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    from parsl_rcylon.table import share_bounds

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    part = make_rows(*share_bounds(args.rows, rank, size))
    samples: Dict[str, Dict[str, List[float]]] = {m: {"write": [], "read": []} for m in ("off", "on")}
    nbytes = 0
    for rep in range(args.repeats):
        for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):
            if rank == 0:
                os.sync()
            write_s, read_s, ref = timed_handoff(comm, part, {"fsync": mode == "on"}, "fsync", f"{mode}{rep}",
                                                 args.data_dir, args.rows)
            samples[mode]["write"].append(write_s)
            samples[mode]["read"].append(read_s)
            nbytes = ref.nbytes
            if rank == 0:
                ref.delete()
            comm.Barrier()
    if rank == 0:
        with open(args.result, "w") as f:
            json.dump({"samples": samples, "file_bytes": nbytes}, f)


def run_case(rows: int, ranks: int, repeats: int, data_dir: str, tmp: str) -> Dict[str, Any]:
    result = os.path.join(tmp, f"fsync-{rows}-{ranks}.json")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable,
           str(Path(__file__).resolve()), "--worker", "--rows", str(rows), "--repeats", str(repeats),
           "--data-dir", data_dir, "--result", result]
    subprocess.run(cmd, check=True, env=env, timeout=3600)
    with open(result) as f:
        raw = json.load(f)
    out: Dict[str, Any] = {"rows": rows, "ranks": ranks, "file_bytes": raw["file_bytes"]}
    for mode, s in raw["samples"].items():
        handoff = [w + r for w, r in zip(s["write"], s["read"], strict=True)]
        out[mode] = {"write_s": round(med(s["write"]), 4), "read_s": round(med(s["read"]), 4),
                     "handoff_s": round(med(handoff), 4), "write_all": [round(x, 4) for x in s["write"]],
                     "read_all": [round(x, 4) for x in s["read"]]}
    off, on = out["off"], out["on"]
    # fsync touches the write only; reads come from the page cache either way and are the noisier
    # phase, so the cost is the write's difference over the hand-off without fsync.
    out["fsync_write_cost_s"] = round(on["write_s"] - off["write_s"], 4)
    out["cost_of_handoff"] = round((on["write_s"] - off["write_s"]) / off["handoff_s"], 4)
    out["overhead_of_handoff"] = round(on["handoff_s"] / off["handoff_s"] - 1, 4)
    out["overhead_of_write"] = round(on["write_s"] / off["write_s"] - 1, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for fsync.json")
    parser.add_argument("--rows", default="2000000,8000000")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--data-dir", default=None, help="where tables are written (default: a temp dir)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.rows = int(args.rows)
        return worker(args)
    if not args.out:
        parser.error("--out is required")
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="fsync-", dir=args.data_dir)
    cases = []
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            for ranks in (int(n) for n in args.ranks.split(",")):
                case = run_case(rows, ranks, args.repeats, os.path.join(tmp, "data"), tmp)
                cases.append(case)
                print(f"rows={rows:>9} ranks={ranks}  write off {case['off']['write_s']:.3f}s "
                      f"on {case['on']['write_s']:.3f}s  hand-off off {case['off']['handoff_s']:.3f}s "
                      f"on {case['on']['handoff_s']:.3f}s  "
                      f"fsync cost {100 * case['cost_of_handoff']:+.1f}% of the hand-off",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    worst = max(c["cost_of_handoff"] for c in cases)
    report = {
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "data_dir": args.data_dir or tempfile.gettempdir()},
        "note": "medians; hand-off = publish_result + resolve_arguments on as many ranks; os.sync before "
                "each write (untimed); cost_of_handoff = (median write with fsync - without) / median "
                "hand-off without; overhead_of_handoff = median hand-off with / without - 1 (reads included)",
        "cases": cases,
        "worst_cost_of_handoff": worst,
        "target_cost_below_10pct": worst < 0.10,
    }
    path = os.path.join(args.out, "fsync.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"worst fsync cost {100 * worst:+.1f}% of the hand-off; wrote {path}")


if __name__ == "__main__":
    main()
