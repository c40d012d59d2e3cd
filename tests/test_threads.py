"""The OpenMP wait policy reaches libgomp when torch is imported through lmkreg, user settings
win, and the thread/worker choice follows the free cores.

libgomp prints its internal settings with OMP_DISPLAY_ENV=VERBOSE when it loads; GOMP_SPINCOUNT
is 0 under the passive policy and 300000 by default, which tells the two apart (its
OMP_WAIT_POLICY line reads PASSIVE in both cases)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmkreg import threads

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import {first}; import torch; torch.ones(1000).sum(); print('threads', torch.get_num_threads())"


def _run(first: str, **env_changes) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", threads.ENV_POLICY, threads.ENV_THREADS)}
    env.update({"OMP_DISPLAY_ENV": "VERBOSE", "PYTHONPATH": str(ROOT)}, **env_changes)
    proc = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def _spincount(stderr: str) -> int:
    found = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", stderr)
    if not found:
        pytest.skip("this torch build does not use GNU OpenMP (no OMP_DISPLAY_ENV output)")
    return int(found[0])


def test_importing_lmkreg_first_makes_openmp_threads_sleep_instead_of_spinning():
    _, ours = _run("lmkreg")
    _, off = _run("lmkreg", LMKREG_THREAD_POLICY="off")  # the library default, as torch alone has it
    assert _spincount(ours) == 0
    assert _spincount(off) > 0


def test_a_users_wait_policy_and_thread_count_are_kept():
    out, err = _run("lmkreg", OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err and "threads 1" in out
    out, err = _run("lmkreg", LMKREG_NUM_THREADS="1")
    assert _spincount(err) == 0 and "threads 1" in out


def test_set_openmp_environment_only_fills_in_missing_values():
    env = {"OMP_NUM_THREADS": "3"}
    assert threads.set_openmp_environment(env, loaded=()) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {threads.ENV_THREADS: "2"}
    assert threads.set_openmp_environment(env, loaded=()) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    env = {threads.ENV_POLICY: "off"}
    assert threads.set_openmp_environment(env, loaded=()) == {} and env == {threads.ENV_POLICY: "off"}


@pytest.mark.parametrize("busy_now, load, expected", [
    (0.05, 0.1, 4),   # idle
    (1.1, 1.0, 3),    # one busy program
    (2.0, 0.2, 4),    # a blip just now, idle over the last minute: both must agree
    (3.6, 5.0, 1),    # everything taken: still one thread
    (None, 1.6, 2),   # no /proc/stat: the load average alone (1.6 rounds to 2 cores)
])
def test_free_cores(busy_now, load, expected):
    assert threads.free_cores(4, busy_now, load) == expected


def test_thread_plan_from_free_cores_and_overrides():
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    plan = threads.plan_threads(2, env, cpus=2, busy_now=1.0, load_1min=1.2)
    assert (plan.intra_op_threads, plan.workers, plan.free) == (1, 1, 1)
    plan = threads.plan_threads(4, env, cpus=8, busy_now=0.0, load_1min=0.0)
    assert (plan.intra_op_threads, plan.workers) == (8, 1)  # workers never take a whole core each
    plan = threads.plan_threads(0, env, cpus=8, busy_now=0.0, load_1min=0.0)
    assert plan.workers == 0
    plan = threads.plan_threads(2, {threads.ENV_THREADS: "3"}, cpus=8, busy_now=0.0, load_1min=0.0)
    assert plan.intra_op_threads == 3 and plan.workers == 2 and threads.ENV_THREADS in plan.reason
    plan = threads.plan_threads(2, {threads.ENV_POLICY: "off"}, cpus=8, busy_now=7.0, load_1min=7.0)
    assert (plan.intra_op_threads, plan.workers) == (8, 2)
    with pytest.raises(ValueError, match=threads.ENV_THREADS):
        threads.plan_threads(2, {threads.ENV_THREADS: "many"}, cpus=2)


def test_busy_cores_now_reads_proc_stat_around_the_sleep(monkeypatch):
    samples = iter([(100.0, 400.0), (150.0, 600.0)])  # 50 of 200 jiffies busy over 2 cpus
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(samples))
    assert threads.busy_cores_now([0, 1], 0.0, sleep=lambda s: None) == pytest.approx(0.5)


def test_other_programs_watch_subtracts_this_process_own_cpu_time():
    # 2 cpus, 10 s: 1500 of 2000 jiffies busy = 1.5 cores in all; this process used 6 s of CPU in
    # those 10 s = 0.6 core -> other programs 0.9 core -> 1 core taken, 1 free
    cpu = iter([(0.0, 0.0), (1500.0, 2000.0)])
    own = iter([100.0, 106.0])
    clock = iter([50.0, 60.0])
    watch = threads.OtherProgramsWatch([0, 1], read_cpu=lambda c: next(cpu), read_own=lambda: next(own),
                                       clock=lambda: next(clock))
    assert watch.free_cores() == 1
