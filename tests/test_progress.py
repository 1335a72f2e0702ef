"""The progress view: the task board's counts, plain lines on a non-terminal, the summary per app."""
from __future__ import annotations

import io
import time
from concurrent.futures import Future

import pyarrow as pa
import pytest

from parsl_rcylon import cylon_app
from parsl_rcylon.progress import Progress, TaskBoard, View, plain_line, show_progress, summary_lines


def test_board_counts_tasks_through_their_states():
    board = TaskBoard()
    futs = [Future() for _ in range(3)]
    for i, fut in enumerate(futs):
        board.submitted(f"t{i}", "stage", fut)
    board.started("t0")
    board.started("t1")
    assert vars(board.snapshot()["stage"]) | {"seconds": 0} == {"queued": 1, "running": 2, "done": 0, "failed": 0,
                                                               "seconds": 0}
    time.sleep(0.05)
    futs[0].set_result(1)
    futs[1].set_exception(ValueError("x"))
    futs[2].set_result(2)  # ended without a start reported (it failed before its ranks got it)
    tally = board.snapshot()["stage"]
    assert (tally.queued, tally.running, tally.done, tally.failed, tally.count) == (0, 0, 2, 1, 3)
    assert tally.seconds >= 0.1, "two tasks ran about 0.05 s each"


def test_plain_line_and_summary_name_apps_pools_rows_and_bytes():
    board = TaskBoard()
    fut = Future()
    board.submitted("t", "join", fut)
    board.started("t")
    fut.set_result(None)
    view = View({"join": {"tally": board.snapshot()["join"], "rows": 1_000_000, "bytes": 3 << 20}},
                {"default": {"ranks": 4, "busy": 1, "idle": 3}}, 12.5)
    line = plain_line(view)
    assert "1 done" in line and "join 1/1" in line and "default 1/4 busy" in line
    assert "1,000,000 rows" in line and "3.0 MB" in line
    summary = summary_lines(view)
    assert summary[0].startswith("summary after 12.5 s")
    assert summary[-1].split()[:3] == ["join", "1", "0"] and "3.0 MB" in summary[-1]


@cylon_app(ranks=2)
def make_rows(ctx, n, pause):
    import time

    time.sleep(pause)
    return pa.table({"x": list(range(ctx.rank * n, (ctx.rank + 1) * n))})


@pytest.mark.integration
def test_plain_mode_on_a_non_terminal_during_a_real_run(rcylon):
    stream = io.StringIO()
    assert not stream.isatty()
    before = rcylon.task_board.snapshot().get("make_rows")
    with show_progress(rcylon, stream=stream, interval=0.5) as progress:
        assert isinstance(progress, Progress) and not progress.live
        refs = [make_rows(1000, 1.0) for _ in range(3)]
        assert [r.result(timeout=120).num_rows for r in refs] == [2000] * 3
    text = stream.getvalue()
    lines = text.splitlines()
    periodic = [line for line in lines if "tasks:" in line]
    assert len(periodic) >= 2, text
    assert any("running" in line and "make_rows" in line for line in periodic)
    assert "\x1b[" not in text, "no terminal control codes when output is not a terminal"
    row = next(line for line in lines if line.startswith("make_rows"))
    done_before = before.done if before else 0
    assert row.split()[1] == str(done_before + 3)
    rows = int(row.split()[4].replace(",", ""))
    assert rows >= 6000


def test_live_view_renders_apps_and_pools_with_rich():
    from rich.console import Console

    from parsl_rcylon.progress import _rich_view

    board = TaskBoard()
    fut = Future()
    board.submitted("t", "sort", fut)
    board.started("t")
    view = View({"sort": {"tally": board.snapshot()["sort"], "rows": 42, "bytes": 2048}},
                {"default": {"ranks": 4, "busy": 1, "idle": 3, "queued": 0, "running": 1}}, 3.0)
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(_rich_view(view))
    text = console.export_text()
    assert "sort" in text and "2.0 KB" in text and "default" in text
    row = next(line for line in text.splitlines() if " sort " in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:5] == ["sort", "0", "1", "0", "0"], cells  # queued, running, done, failed
