"""Tasks run in the client's working directory, as with Parsl's own executors (real local pilot).

``working_dir`` is Parsl's staging directory (Parsl may set it after load);
``task_dir`` is the option that moves every task.
"""
from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest
from parsl import bash_app, python_app
from parsl.data_provider.files import File

from parsl_rcylon import cylon_app
from parsl_rcylon.workdir import WorkingDirectoryError, task_working_dir, working_directory


@bash_app
def echo_to(outputs=(), stdout=None, stderr=None):
    return f"echo 1 > {outputs[0].filepath}; echo to-stdout; echo to-stderr 1>&2"


@bash_app
def count_lines(inputs=(), outputs=()):
    return f"wc -l < {inputs[0].filepath} > {outputs[0].filepath}"


@python_app
def write_relative(name, text):
    import os

    with open(name, "w") as f:
        f.write(text)
    return os.getcwd()


@cylon_app(ranks=2)
def where_ranks_run(ctx):
    import os

    return ctx.comm.allgather(os.getcwd())


@pytest.mark.integration
def test_bash_app_relative_outputs_stdout_stderr(rcylon, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fut = echo_to(outputs=[File("output.txt")], stdout="std.out", stderr="std.err")
    assert fut.result(timeout=120) == 0
    fut.outputs[0].result(timeout=60)
    assert (tmp_path / "output.txt").read_text() == "1\n"
    assert (tmp_path / "std.out").read_text() == "to-stdout\n"
    # Parsl's bash app writes the command into stderr first, then the command's own output.
    assert (tmp_path / "std.err").read_text().endswith("--> end executable <--\nto-stderr\n")
    # The File the caller holds names the file the task wrote; a second stage reads it by the same name.
    counted = count_lines(inputs=[fut.outputs[0]], outputs=[File("count.txt")])
    counted.result(timeout=120)
    assert (tmp_path / "count.txt").read_text().strip() == "1"


@pytest.mark.integration
def test_python_and_cylon_apps_run_in_the_client_cwd(rcylon, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert write_relative("hello.txt", "hi").result(timeout=120) == str(tmp_path)
    assert (tmp_path / "hello.txt").read_text() == "hi"
    assert where_ranks_run().result(timeout=120) == [str(tmp_path)] * 2
    # The cwd is taken when the task is submitted: a later chdir moves later tasks.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert write_relative("x.txt", "x").result(timeout=120) == str(other)


@pytest.mark.integration
def test_task_dir_option_and_a_directory_the_ranks_cannot_enter(rcylon, tmp_path, monkeypatch):
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    monkeypatch.setattr(rcylon, "task_dir", str(chosen))
    assert write_relative("y.txt", "y").result(timeout=120) == str(chosen)
    assert (chosen / "y.txt").read_text() == "y"
    monkeypatch.setattr(rcylon, "task_dir", str(tmp_path / "missing"))
    with pytest.raises(WorkingDirectoryError, match=r"missing.*on host .*task_dir.*worker nodes share"):
        where_ranks_run().result(timeout=120)
    monkeypatch.setattr(rcylon, "task_dir", None)
    monkeypatch.chdir(tmp_path)
    # The ranks that failed to enter it are usable again, back in their own directory between tasks.
    assert where_ranks_run().result(timeout=120) == [str(tmp_path)] * 2
    assert os.getcwd() == str(tmp_path)


# Parsl's documentation, "Composing a workflow": a python app's result saved by a bash app, read by the caller.
@python_app
def generate(limit):
    from random import randint

    return randint(1, limit)


@bash_app
def save(variable, outputs=()):
    return f"echo {variable} &> {outputs[0]}"


@bash_app
def hello(stdout="std.out"):
    return "echo hello"


@python_app
def read_staged(inputs=()):
    import os

    with open(inputs[0].filepath) as f:
        return inputs[0].filepath, os.getcwd(), f.read()


@pytest.mark.integration
def test_working_dir_set_by_parsl_after_load_is_only_the_staging_directory(rcylon, tmp_path, monkeypatch):
    """Parsl's own test harness sets ``working_dir`` on every executor after load (a Path, even)."""
    script, staging = tmp_path / "script", tmp_path / "staging"
    script.mkdir()
    monkeypatch.chdir(script)
    monkeypatch.setattr(rcylon, "working_dir", staging)

    random = generate(10)
    saved = save(random, outputs=[File("output.txt")])
    with open(saved.outputs[0].result(timeout=120)) as f:
        assert int(f.read()) == random.result()
    assert (script / "output.txt").exists()

    assert hello().result(timeout=120) == 0
    assert (script / "std.out").read_text() == "hello\n"
    assert not staging.exists(), "nothing stages here, so nothing runs here either"

    # Parsl's default data providers: http:// is downloaded into working_dir by a staging task on
    # this executor, file:// is read where it is.
    served = tmp_path / "served"
    served.mkdir()
    (served / "data.csv").write_text("a,b\n1,2\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.csv"
        path, cwd, text = read_staged(inputs=[File(url)]).result(timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert (path, cwd, text) == (str(staging / "data.csv"), str(script), "a,b\n1,2\n")
    assert (staging / "data.csv").read_text() == "a,b\n1,2\n"
    path, cwd, text = read_staged(inputs=[File(f"file://{served / 'data.csv'}")]).result(timeout=120)
    assert (path, cwd, text) == (str(served / "data.csv"), str(script), "a,b\n1,2\n")


def test_working_dir_and_task_dir_are_two_options(tmp_path, monkeypatch):
    from parsl_rcylon import RadicalCylonExecutor

    monkeypatch.chdir(tmp_path)
    ex = RadicalCylonExecutor(working_dir="staging", task_dir="tasks")
    assert ex.working_dir == "staging", "kept as given, as HTEX keeps it: the data providers join it"
    assert ex.task_dir == str(tmp_path / "tasks") == ex.data.task_dir, "made absolute once, by its option group"
    assert RadicalCylonExecutor().task_dir is None


def test_working_directory_enters_and_leaves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inner = tmp_path / "inner"
    inner.mkdir()
    with working_directory(str(inner), "t1"):
        assert os.getcwd() == str(inner)
    assert os.getcwd() == str(tmp_path)
    with pytest.raises(RuntimeError):
        with working_directory(str(inner), "t1"):
            raise RuntimeError("user code failed")
    assert os.getcwd() == str(tmp_path), "left even when the task raised"
    (tmp_path / "file").write_text("")
    for bad in ("missing", "file"):
        with pytest.raises(WorkingDirectoryError, match=rf"task t2: cannot run in working directory .*{bad}"):
            with working_directory(str(tmp_path / bad), "t2"):
                pass
    assert task_working_dir(None) == str(tmp_path)
    assert task_working_dir("rel") == str(tmp_path / "rel")
