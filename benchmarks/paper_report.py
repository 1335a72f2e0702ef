"""Tables and figures of the paper reproduction (``results.md``, ``ops.png``, ``pipeline.png``)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)


def _fmt(value: Optional[float], spec: str = ".3f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def markdown(result: Dict[str, Any]) -> str:
    """The results as a markdown document: headline, operations, pipeline, start-up."""
    o, m, t = result["options"], result["machine"], result["targets"]
    lines = [
        "# Radical-Cylon reproduction with parsl_rcylon",
        "",
        f"{result['when']}: {m['cpus']} cores, {m['platform']}, Python {m['python']}, pyarrow {m['pyarrow']}, "
        f"{m['mpi']}. Load average {m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after. "
        f"Ranks {', '.join(str(r) for r in o['ranks'])}, {o['rows_per_rank']:,} rows per rank (weak scaling), "
        f"{o['strong_rows']:,} rows "
        f"(strong scaling), {o['iterations']} iteration(s) per mode; medians. "
        f"{'`--quick` run. ' if o['quick'] else ''}Whole run {result['elapsed_s']:.0f} s.",
        "",
    ]
    met = result["targets_met"]
    if result.get("speedup_vs_batch") is not None:
        lines.append(f"- **End-to-end speedup of parsl_rcylon over batch** (generate, then join and sort): "
                     f"**{result['speedup_vs_batch']:.2f}x** (smallest over the rank counts; target "
                     f">= {t['speedup_vs_batch_min']}x: {_verdict(met['speedup_vs_batch'])}).")
    if result.get("overhead_pct") is not None:
        lines.append(f"- **Operation overhead over bare-metal**: **{result['overhead_pct']:+.1f}%** "
                     f"(all configurations, weighted by time; target <= {t['overhead_pct_max']}%: "
                     f"{_verdict(met['overhead_pct'])}). Operation run again in the same processes (both warm): "
                     f"{_fmt(result.get('warm_overhead_pct'), '+.1f', '%')}.")
    if result.get("startup_s") is not None:
        launch = ", ".join(f"{r} rank(s) {s:.2f} s" for r, s in result["batch_stage_startup_s"].items())
        lines.append(f"- **Start-up**: pilot {result['startup_s']:.1f} s once (not in the pipeline times); "
                     f"an empty batch stage (`mpiexec` + Python + imports + `MPI_Init`): {launch}, every stage.")
    lines.append("")
    if result["operations"]:
        lines += [
            "## Operations: bare-metal `mpiexec` vs a `cylon_app` task in the pilot",
            "",
            "Operation time measured inside, after a barrier, slowest rank (the inputs already read): the "
            "first run in the job or task. *Warm*: the same operation run again in the same processes. "
            "Job/task wall: from launch (bare-metal) or submission (parsl_rcylon) to the result, "
            "reading and writing Parquet included.",
            "",
            "| op | scaling | ranks | rows per table | bare-metal op (s) | parsl_rcylon op (s) | overhead (s) "
            "| overhead | warm: bare-metal (s) | warm: parsl_rcylon (s) | warm overhead "
            "| bare-metal job wall (s) | parsl_rcylon task wall (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for op in result["operations"]:
            lines.append(
                f"| {op['op']} | {' + '.join(op['scalings'])} | {op['ranks']} | {op['rows']:,} "
                f"| {_fmt(op['bare_metal_op_s'])} | {_fmt(op['parsl_rcylon_op_s'])} | {_fmt(op['overhead_s'], '+.3f')} "
                f"| {_fmt(op['overhead_pct'], '+.1f', '%')} | {_fmt(op.get('bare_metal_warm_op_s'))} "
                f"| {_fmt(op.get('parsl_rcylon_warm_op_s'))} | {_fmt(op.get('warm_overhead_pct'), '+.1f', '%')} "
                f"| {_fmt(op['bare_metal_launch_wall_s'], '.2f')} "
                f"| {_fmt(op['parsl_rcylon_task_wall_s'], '.2f')} |")
        lines.append("")
    if result["pipeline"]:
        lines += [
            "## Pipeline: generate two tables, then join them and sort one",
            "",
            "Batch: three `mpiexec` jobs one after another (generate writes both tables). parsl_rcylon: four "
            "`cylon_app` tasks in one pilot; the two generates run side by side, then the join and the sort. "
            "Every stage on the same number of ranks; times exclude the pilot's start-up.",
            "",
            "| ranks per stage | rows per table | batch (s) | parsl_rcylon (s) | speedup | time saved "
            "| batch: stages' own time (s) | parsl_rcylon: stages' own time (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in result["pipeline"]:
            lines.append(
                f"| {p['ranks']} | {p['rows_per_table']:,} | {_fmt(p['batch_s'], '.2f')} "
                f"| {_fmt(p['parsl_rcylon_s'], '.2f')} | {_fmt(p['speedup'], '.2f', 'x')} "
                f"| {_fmt(p['saved_pct'], '.0f', '%')} | {_fmt(p['batch_inside_s'], '.2f')} "
                f"| {_fmt(p['parsl_rcylon_inside_s'], '.2f')} |")
        lines.append("")
    st = result.get("startup") or {}
    ex = st.get("executor") or {}
    if st:
        lines += [
            "## Start-up and shutdown (once per pilot)",
            "",
            "| parsl.load | session | managers | pilot active | workers ready | warm-up task | shutdown |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {_fmt(st.get('load_s'), '.1f')} | {_fmt(ex.get('session'), '.1f')} "
            f"| {_fmt(ex.get('managers'), '.1f')} | {_fmt(ex.get('pilot'), '.1f')} | {_fmt(ex.get('workers'), '.1f')} "
            f"| {_fmt(st.get('warm_up_s'), '.2f')} | {_fmt(st.get('shutdown_s'), '.1f')} |",
            "",
        ]
    return "\n".join(lines)


# -- figures ---------------------------------------------------------------------------------------


def plots(result: Dict[str, Any], out: Path) -> List[Path]:
    """Draw ``ops.png`` and ``pipeline.png`` in the style of the paper's figures; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if result["operations"]:
        paths.append(_ops_figure(plt, result, out / "ops.png"))
    if result["pipeline"]:
        paths.append(_pipeline_figure(plt, result, out / "pipeline.png"))
    return paths


_BARE, _PARSL = "#7f7f7f", "#1f77b4"


def _spread(values: List[float], centre: float) -> List[float]:
    return [centre - min(values), max(values) - centre] if values else [0.0, 0.0]


def _ops_figure(plt: Any, result: Dict[str, Any], path: Path) -> Path:
    ops = result["operations"]
    names = [n for n in ("join", "sort") if any(o["op"] == n for o in ops)]
    scalings = [s for s in ("weak", "strong") if any(s in o["scalings"] for o in ops)]
    fig, axes = plt.subplots(len(names), len(scalings), figsize=(5.5 * len(scalings), 3.8 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        for j, scaling in enumerate(scalings):
            ax = axes[i][j]
            rows = sorted((o for o in ops if o["op"] == name and scaling in o["scalings"]), key=lambda o: o["ranks"])
            xs = list(range(len(rows)))
            for k, (label, key, raw, colour) in enumerate((("bare-metal", "bare_metal_op_s", "bare_metal", _BARE),
                                                           ("parsl_rcylon", "parsl_rcylon_op_s", "parsl_rcylon",
                                                            _PARSL))):
                heights = [o[key] for o in rows]
                errs = list(zip(*[_spread([r["op_s"] for r in o["raw"][raw]], o[key]) for o in rows], strict=True))
                ax.bar([x + (k - 0.5) * 0.38 for x in xs], heights, 0.38, label=label, color=colour,
                       yerr=errs if errs else None, capsize=3)
            for x, o in zip(xs, rows, strict=True):
                top = max(o["bare_metal_op_s"], o["parsl_rcylon_op_s"])
                ax.annotate(f"{o['overhead_pct']:+.1f}%", (x, top), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
            ax.set_xticks(xs, [str(o["ranks"]) for o in rows])
            ax.set_xlabel("ranks")
            ax.set_ylabel("operation time (s)")
            what = (f"{result['options']['rows_per_rank']:,} rows/rank" if scaling == "weak"
                    else f"{result['options']['strong_rows']:,} rows")
            ax.set_title(f"{name}, {scaling} scaling ({what})", fontsize=10)
            ax.margins(y=0.15)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"Operation time, bare-metal mpiexec vs parsl_rcylon task (overhead {result['overhead_pct']:+.1f}%)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pipeline_figure(plt: Any, result: Dict[str, Any], path: Path) -> Path:
    pipes = sorted(result["pipeline"], key=lambda p: p["ranks"])
    fig, (ax, tl) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    xs = list(range(len(pipes)))
    ax.bar([x - 0.19 for x in xs], [p["batch_s"] for p in pipes], 0.38, label="batch (a job per stage)",
           color=_BARE, yerr=list(zip(*[_spread([r["wall_s"] for r in p["raw"]["batch"]], p["batch_s"])
                                       for p in pipes], strict=True)), capsize=3)
    ax.bar([x + 0.19 for x in xs], [p["parsl_rcylon_s"] for p in pipes], 0.38, label="parsl_rcylon (one pilot)",
           color=_PARSL, yerr=list(zip(*[_spread([r["wall_s"] for r in p["raw"]["parsl_rcylon"]],
                                                 p["parsl_rcylon_s"]) for p in pipes], strict=True)), capsize=3)
    for x, p in zip(xs, pipes, strict=True):
        ax.annotate(f"{p['speedup']:.2f}x", (x, max(p["batch_s"], p["parsl_rcylon_s"])), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=9)
    ax.set_xticks(xs, [f"{p['ranks']}\n({p['rows_per_table']:,} rows)" for p in pipes])
    ax.set_xlabel("ranks per stage (rows per table)")
    ax.set_ylabel("pipeline time (s)")
    ax.set_title("generate -> join + sort, end to end", fontsize=10)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    _timeline(tl, pipes[-1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timeline(ax: Any, pipe: Dict[str, Any]) -> None:
    """One run of each mode at the largest rank count: batch jobs in sequence, tasks overlapping."""
    colours = {"generate": "#2ca02c", "join": "#d62728", "sort": "#9467bd"}
    batch = min(pipe["raw"]["batch"], key=lambda r: abs(r["wall_s"] - pipe["batch_s"]))
    parsl = min(pipe["raw"]["parsl_rcylon"], key=lambda r: abs(r["wall_s"] - pipe["parsl_rcylon_s"]))
    start = 0.0
    jobs = [batch["stages"][0], batch["stages"][2], batch["stages"][3]]
    for job in jobs:
        wall = job["launch_wall_s"]
        ax.barh(1, wall, left=start, color=colours[job["stage"]], alpha=0.35, edgecolor="black")
        inside = job["total_s"] if job["stage"] != "generate" else sum(
            s["total_s"] for s in batch["stages"][:2])
        ax.barh(1, inside, left=start + wall - inside, color=colours[job["stage"]], height=0.5)
        start += wall
    lanes: List[float] = []
    for stage in sorted(parsl["stages"], key=lambda s: s["t_start"]):
        begin, end = stage["t_start"] - parsl["t0"], stage["t_end"] - parsl["t0"]
        lane = next((i for i, free in enumerate(lanes) if free <= begin), len(lanes))
        if lane == len(lanes):
            lanes.append(0.0)
        lanes[lane] = end
        ax.barh(-0.3 * lane, end - begin, left=begin, height=0.25, color=colours[stage["stage"]])
    ax.set_yticks([1, -0.15 * max(0, len(lanes) - 1)], ["batch", "parsl_rcylon"])
    handles = [plt_patch(colours[n], n) for n in colours]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_xlabel("seconds from the first launch / submission")
    ax.set_title(f"one run, {pipe['ranks']} rank(s) per stage (pale: job start-up and exit)", fontsize=10)


def plt_patch(colour: str, label: str) -> Any:
    """A legend entry of one colour."""
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)
