"""Process sweeps end the run's own processes and nothing else: real processes, shaped like RP's and not.

What RP's processes carry was measured on a local pilot (see
``parsl_rcylon/runtime/processes.py``); the processes here reproduce each
kind, and next to them what a user on the same login node plausibly runs in
or about the run's directories: ``tail -f`` on a log, a ``sleep`` or a shell
in the session directory, a command whose arguments are paths containing the
session id.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List

import psutil
import pytest

from parsl_rcylon import RadicalCylonExecutor, cylon_app
from parsl_rcylon.runtime.guard import process_spec
from parsl_rcylon.runtime.processes import end_session, session_processes
from tests.conftest import wait_for_no_processes

#: A Python that renames itself as RP's components do, then sleeps (and optionally starts a child).
TITLED = ("import setproctitle, subprocess, sys, time\n"
          "setproctitle.setproctitle(sys.argv[1])\n"
          "if len(sys.argv) > 2:\n"
          "    print(subprocess.Popen(['sleep', '300'], cwd='/').pid, flush=True)\n"
          "time.sleep(300)\n")
SLEEP = "import time; time.sleep(300)"


class Processes:
    """Starts processes for a test and ends every one of them, by PID, afterwards."""

    def __init__(self) -> None:
        self.started: List[psutil.Process] = []

    def start(self, argv: List[str], cwd: Path, env: Dict[str, str] = None, title: str = "") -> psutil.Process:
        popen = subprocess.Popen(argv, cwd=str(cwd), env=dict(os.environ, **(env or {})),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
        proc = psutil.Process(popen.pid)
        self.started.append(proc)
        if title:
            _wait_for(lambda: proc.cmdline()[:1] and proc.cmdline()[0].startswith(title), f"title {title}")
        proc.popen = popen
        return proc

    def titled(self, title: str, cwd: Path, with_child: bool = False) -> psutil.Process:
        """A process named ``title`` by setproctitle, as RP names its components."""
        proc = self.start([sys.executable, "-c", TITLED, title, *(["child"] if with_child else [])], cwd,
                          title=title)
        if with_child:
            proc.child = psutil.Process(int(proc.popen.stdout.readline()))
            self.started.append(proc.child)
        return proc

    def end(self) -> None:
        for proc in list(self.started):  # what they started too (the sleep of a shell or launch script)
            try:
                self.started += proc.children(recursive=True)
            except psutil.Error:
                pass
        for proc in self.started:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(self.started, timeout=10)


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except psutil.Error:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def procs():
    p = Processes()
    try:
        yield p
    finally:
        p.end()


@pytest.fixture
def run(tmp_path):
    """A run directory laid out as the executor's: ``<base>/<sid>`` and the pilot sandbox under ``<base>/sandbox``."""
    sid = f"rp.session.test-{uuid.uuid4()}"
    base = tmp_path / "runinfo" / "000" / "x"
    session = base / sid
    pilot = base / "sandbox" / "radical.pilot.sandbox" / sid / "pilot.0000"
    task = pilot / "x.default.worker.000"
    for d in (session, task):
        d.mkdir(parents=True)
    (session / "agent_0.log").write_text("log\n")
    launch = task / "x.default.worker.000.launch.sh"
    launch.write_text("sleep 300\nexit 0\n")
    return sid, base, session, pilot, task, launch


def _pids(found) -> set:
    return {p.pid for p in found}


def _foreign(procs: Processes, sid: str, base: Path, session: Path, pilot: Path, tmp: Path) -> List[psutil.Process]:
    """What a user plausibly runs in or about a run's directories: none of it is the run's."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "mine.sh").write_text("sleep 300\nexit 0\n")
    other = base / f"rp.session.test-{uuid.uuid4()}"
    other.mkdir()
    lookalike = base / f"{sid}-copy"  # the id as a substring of a directory name
    lookalike.mkdir()
    return [
        procs.start(["sleep", "300"], session),
        procs.start(["tail", "-f", str(session / "agent_0.log")], session),
        procs.start([sys.executable, "-c", SLEEP, f"{pilot}/notes.txt", f"--tag={sid}", f"{sid}.tar"], pilot),
        procs.start(["sh", "-c", "sleep 300; true"], pilot),  # a shell in the sandbox, running no script of RP's
        procs.start(["bash", str(elsewhere / "mine.sh")], pilot),
        procs.start(["tail", "-f", str(next(pilot.rglob("*.launch.sh")))], pilot),  # reading RP's script
        procs.start([sys.executable, "-c", SLEEP], session, env={"RP_SESSION_ID": f"{sid}-2"}),
        procs.titled("rp.agent_executing.0000", other),      # another session's component
        procs.titled("rp.agent_scheduling.0000", lookalike),  # a directory that only contains the id
        procs.titled("agent.rp.0000", session),              # not an RP title
        # a du/tar/watch of the session directory: the id as an operand, from the run's directory
        procs.start([sys.executable, "-c", SLEEP, "-s", sid], base),
        procs.start([sys.executable, "-c", SLEEP, "cf", f"{sid}.tar", sid], base),
    ]


def _rp_like(procs: Processes, sid: str, session: Path, pilot: Path, task: Path, launch: Path
             ) -> List[psutil.Process]:
    """One process of each kind RP starts for a session, shaped as measured."""
    titled = procs.titled("rp.agent_executing.0000", pilot, with_child=True)
    launcher = procs.start(["/usr/bin/bash", str(launch)], task)
    _wait_for(lambda: launcher.children(), "the launch script's child")
    bootstrap = procs.start(["/bin/bash", str(_entry_point(pilot, "bootstrap_0.sh", shell=True)), "-s", sid],
                            pilot.parent)  # the pilot's bootstrap
    _wait_for(lambda: [c for c in bootstrap.children() if c.name() == "sleep"], "the bootstrap's sleep")
    return [
        procs.titled("rp.control_pubsub", session),  # a bridge, renamed, in the client session dir
        titled, titled.child,                             # a component, and what it started elsewhere
        launcher, *launcher.children(),                   # a task's launch script and its command
        procs.start([sys.executable, "-c", SLEEP], Path("/"), env={"RP_SESSION_ID": sid}),  # mpiexec, ranks
        procs.start([sys.executable, str(_entry_point(session.parent, "radical-pilot-bridge")), sid, "reg-url",
                     "bridge"], Path("/")),  # a bridge, before it renames itself
        bootstrap, *bootstrap.children(),
    ]


def _entry_point(where: Path, name: str, shell: bool = False) -> Path:
    """A stand-in for one of RP's programs that take the session id as an argument."""
    path = where / name
    path.write_text("sleep 300\n" if shell else SLEEP + "\n")
    return path


def test_only_the_sessions_processes_match(procs, run, tmp_path):
    sid, base, session, pilot, task, launch = run
    foreign = _foreign(procs, sid, base, session, pilot, tmp_path)
    ours = _rp_like(procs, sid, session, pilot, task, launch)
    for scope in (base, None):  # the executor knows its base directory; the tests' leftover checks do not
        found = _pids(session_processes(sid, scope))
        assert found == _pids(ours), (scope, [(p.pid, p.cmdline()) for p in foreign if p.pid in found],
                                      [(p.pid, p.cmdline()) for p in ours if p.pid not in found])
    assert os.getpid() not in found


def test_the_base_directory_bounds_where_a_process_may_work(procs, run, tmp_path):
    sid, base, *_ = run
    outside = tmp_path / "another-run" / sid  # same id, outside this run's base directory
    outside.mkdir(parents=True)
    titled = procs.titled("rp.agent.0", outside)
    assert titled.pid not in _pids(session_processes(sid, base))
    assert titled.pid in _pids(session_processes(sid))


def test_another_users_processes_never_match(procs, run):
    sid, base, session, pilot, task, launch = run
    ours = _rp_like(procs, sid, session, pilot, task, launch)
    assert _pids(ours) <= _pids(session_processes(sid, base, uid=os.getuid()))
    stranger = os.getuid() + 1
    assert psutil.Process().uids().real != stranger
    assert session_processes(sid, base, uid=stranger) == []


def test_end_session_signals_nothing_but_the_session(procs, run, tmp_path):
    sid, base, session, pilot, task, launch = run
    foreign = _foreign(procs, sid, base, session, pilot, tmp_path)
    ours = _rp_like(procs, sid, session, pilot, task, launch)
    ended = end_session(sid, base, grace=2.0)
    assert set(ended) == _pids(ours)
    _, alive = psutil.wait_procs(ours, timeout=5)
    assert alive == []
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in foreign)


def test_guard_ends_the_session_and_spares_the_rest_when_the_client_dies(procs, run, tmp_path):
    sid, base, session, pilot, task, launch = run
    client = procs.start([sys.executable, "-c", SLEEP], tmp_path)
    foreign = _foreign(procs, sid, base, session, pilot, tmp_path)
    ours = _rp_like(procs, sid, session, pilot, task, launch)
    root = Path(__file__).resolve().parents[2]
    guard = subprocess.Popen([sys.executable, "-m", "parsl_rcylon.runtime.guard", sid, str(base),
                              process_spec(client)], cwd=str(base), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                 [str(root), os.environ.get("PYTHONPATH", "")])))
    try:
        time.sleep(1.0)
        assert guard.poll() is None, guard.stdout.read()
        client.send_signal(signal.SIGKILL)  # and left a zombie: nobody reaps it before the guard looks
        out, _ = guard.communicate(timeout=30)
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
    assert guard.returncode == 0, out
    _, alive = psutil.wait_procs(ours, timeout=5)
    assert alive == [], out
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in foreign), out


#: A client that starts its guard, forks inside the watched window as RP's session does, and is killed there.
DIES_FORKING = ("import os, signal, sys, time\n"
                "from pathlib import Path\n"
                "from parsl_rcylon.runtime.client.hygiene import ClientHygiene\n"
                "hygiene = ClientHygiene('t', Path(sys.argv[1]), {})\n"
                "hygiene.start_guard(sys.argv[2])\n"
                "print(hygiene._guard.pid, flush=True)\n"
                "with hygiene.watch_forks():\n"
                "    pids = []\n"
                "    for _ in range(3):\n"
                "        pid = os.fork()\n"
                "        if pid == 0:\n"
                "            time.sleep(300)\n"
                "            os._exit(0)\n"
                "        pids.append(pid)\n"
                "    print(*pids, flush=True)\n"
                "    os.kill(os.getpid(), signal.SIGKILL)\n")


def test_guard_ends_the_forks_of_a_client_killed_while_its_session_opens(procs, tmp_path):
    # RP's proxy fork is made inside rp.Session(): a client killed there has no session to sweep by id.
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    root = Path(__file__).resolve().parents[2]
    client = procs.start([sys.executable, "-c", DIES_FORKING, str(base), f"rp.session.{uuid.uuid4()}"], tmp_path,
                         env={"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])})
    guard = psutil.Process(int(client.popen.stdout.readline()))
    forks = [psutil.Process(int(pid)) for pid in client.popen.stdout.readline().split()]
    procs.started += [guard, *forks]
    assert len(forks) == 3
    client.popen.wait(timeout=30)
    _, alive = psutil.wait_procs(forks, timeout=15)
    assert alive == [], (base / "guard.log").read_text()
    psutil.wait_procs([guard], timeout=15)
    assert not _alive(guard)
    log = (base / "guard.log").read_text()
    assert all(str(p.pid) in log for p in forks), log


# -- on a real pilot ---------------------------------------------------------------------------------


@cylon_app(ranks=2)
def total(ctx):
    return ctx.comm.allreduce(ctx.rank)


def _bystanders(procs: Processes, sid: str, session: Path, pilot: Path) -> List[psutil.Process]:
    """A user's processes whose command lines and working directories contain the session id."""
    (session / "mine.log").write_text("")
    started = [
        procs.start(["tail", "-f", str(session / "mine.log")], session),
        procs.start(["tail", "-f", str(pilot / "agent_0.err")], pilot),
        procs.start(["sleep", "300"], pilot),
        procs.start(["sh", "-c", f"sleep 300; echo {pilot}"], pilot),
        procs.start([sys.executable, "-c", SLEEP, f"--notes={session}/notes.txt"], session),
        # a du/tar of the session directory, by its name, from the run's directory
        procs.start([sys.executable, "-c", SLEEP, "-s", sid], session.parent),
    ]
    if shutil.which("watch"):  # a real one, watching the session directory by its name
        started.append(procs.start(["watch", "-n", "60", "ls", sid], session.parent, env={"TERM": "xterm"}))
    time.sleep(0.5)
    assert _dead(started) == [], "a bystander ended by itself"
    return started


def _dead(procs: List[psutil.Process]) -> list:
    return [(p.pid, " ".join(p.popen.args)) for p in procs if not _alive(p)]


def _mentioning(sid: str) -> set:
    """PIDs the sweep once matched: the id as a substring of an argument or of the working directory."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(sid in a for a in proc.info["cmdline"] or ()) or sid in proc.cwd() \
                    or proc.environ().get("RP_SESSION_ID") == sid:
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found - {os.getpid()}


def _title(proc: psutil.Process) -> str:
    try:
        return (proc.cmdline() or [""])[0]
    except psutil.Error:
        return ""


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.integration
def test_a_users_processes_in_the_session_directories_survive_shutdown(procs, tmp_path):
    ex = RadicalCylonExecutor(label="sweeps", worker_ranks=2)
    ex.run_dir = str(tmp_path)
    ex.start()
    sid = ex.session_id
    try:
        assert ex.submit(total.func, {"ranks": 2}).result(timeout=60) == 1
        session = ex.base_dir / sid
        pilot = next(ex.base_dir.glob(f"sandbox/*/{sid}/pilot.0000"))
        bystanders = _bystanders(procs, sid, session, pilot)
        before = _mentioning(sid)
        found = _pids(session_processes(sid, ex.base_dir))
        theirs = _pids(bystanders) | {c.pid for p in bystanders for c in p.children(recursive=True)}
        # The client's guard carries the id too, but is the client's own: it is ended by the
        # client (or ends itself), not swept, and sweeps only RP's programs by their arguments.
        guard = ex._own.hygiene._guard.pid
        mentioning = (before & _mentioning(sid)) - theirs - {guard}
        assert len(found) > 10 and not found & theirs
        # Every process the old substring rule saw throughout, bystanders aside, is still found.
        assert mentioning - found == set(), [psutil.Process(p).cmdline() for p in mentioning - found]
    finally:
        ex.shutdown()
    assert wait_for_no_processes(sid, timeout=10) == []
    assert _dead(bystanders) == []


@pytest.mark.integration
def test_a_users_processes_in_the_session_directories_survive_the_pilots_watchdog(procs, tmp_path):
    """Client and guard killed: the master SIGKILLs its session after the heartbeat threshold, and only it.

    (With the guard alive, the guard ends the session at once; the unit test
    above covers it with real processes.)
    """
    script = Path(__file__).parents[1] / "lifecycle_client.py"
    run_dir = tmp_path / "runinfo"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(script.parent.parent), os.environ.get("PYTHONPATH", "")]))
    client = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp_path))
    sid, lines, children = None, [], []
    try:
        deadline = time.monotonic() + 240
        while sid is None and time.monotonic() < deadline:
            line = client.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("SESSION "):
                sid = line.split()[1]
        assert sid, "client did not start:\n" + "".join(lines[-40:])
        session = next(run_dir.glob(f"*/victim/{sid}"))
        pilot = next(session.parent.glob(f"sandbox/*/{sid}/pilot.0000"))
        bystanders = _bystanders(procs, sid, session, pilot)
        children = psutil.Process(client.pid).children()  # the guard and RP's proxy fork of the client
        guard = [c for c in children if "parsl_rcylon.runtime.guard" in c.cmdline()]
        assert len(guard) == 1, [c.cmdline() for c in children]
        guard[0].kill()
        _wait_for(lambda: not _alive(guard[0]), "the guard to end")  # a zombie until the client reaps it
    finally:
        client.kill()
        client.wait(timeout=10)
    for child in children:  # what only the guard would have ended
        try:
            child.kill()
        except psutil.Error:
            pass
    # RP's agent outlives its client (by minutes, measured): only the master's sweep ends it, after the
    # heartbeat threshold (30 s), so agent components alive well after the kill and gone later were swept.
    time.sleep(10)
    agent = [p for p in session_processes(sid) if _title(p).startswith("rp.agent")]
    assert agent, "the pilot's agent ended before its master could sweep it"
    assert wait_for_no_processes(sid, timeout=90) == []
    assert _dead(bystanders) == []
