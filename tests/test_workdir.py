"""Tasks run in the client's working directory, as with Parsl's own executors (real local pilot)."""
from __future__ import annotations

import os

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
def test_working_dir_option_and_a_directory_the_ranks_cannot_enter(rcylon, tmp_path, monkeypatch):
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    monkeypatch.setattr(rcylon, "working_dir", str(chosen))
    assert write_relative("y.txt", "y").result(timeout=120) == str(chosen)
    assert (chosen / "y.txt").read_text() == "y"
    monkeypatch.setattr(rcylon, "working_dir", str(tmp_path / "missing"))
    with pytest.raises(WorkingDirectoryError, match=r"missing.*on host .*worker nodes share"):
        where_ranks_run().result(timeout=120)
    monkeypatch.setattr(rcylon, "working_dir", None)
    monkeypatch.chdir(tmp_path)
    # The ranks that failed to enter it are usable again, back in their own directory between tasks.
    assert where_ranks_run().result(timeout=120) == [str(tmp_path)] * 2
    assert os.getcwd() == str(tmp_path)


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
