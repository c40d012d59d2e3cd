"""Step-time benchmark on a shared CPU: one training step and one prediction of the planned MR
and US networks, on an idle machine and beside 1 and 2 competing CPU-bound processes, with the
libraries' default thread settings ("old") and lmkreg's thread policy ("new"), in one run.

The competing processes are pure-Python busy loops that this script starts and stops itself.
Each thread setting runs in its own subprocess, because OpenMP reads its wait policy once, when
torch is loaded.  Target (issue 16): with the new settings a step beside one or two busy
processes takes at most 2.5x its idle time.

    python benchmarks/thread_benchmark.py [--plans PLANS.json] [--steps 6] [--settings old new]

Results: benchmarks/results/thread_benchmark.json (summary in documentation/benchmarks.md).
Other programs running at the same time inflate the numbers: the load average and the CPU use
measured just before each measurement are stored with it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "thread_benchmark.json"
DEFAULT_PLANS = ROOT / "documentation" / "plans_examples" / "mu_regpro_plans.json"
TARGET_RATIO = 2.5

# each setting: environment changes for its subprocess (None = remove the variable)
SETTINGS = {
    "old": {"LMKREG_THREAD_POLICY": "off", "OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None,
            "LMKREG_NUM_THREADS": None},
    "new": {"LMKREG_THREAD_POLICY": None, "OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None,
            "LMKREG_NUM_THREADS": None},
    # fixed counts with the passive policy, to see what the automatic choice trades
    "passive_1": {"LMKREG_THREAD_POLICY": None, "OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None,
                  "LMKREG_NUM_THREADS": "1"},
    "passive_all": {"LMKREG_THREAD_POLICY": None, "OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None,
                    "LMKREG_NUM_THREADS": str(len(os.sched_getaffinity(0)))},
}

BUSY_LOOP = "import time\nwhile True:\n    pass\n"


# ---- child: time one setting --------------------------------------------------------------------

def child(plans_path: Path, steps: int) -> dict:
    """Time `steps` training steps and predictions per configuration (after 2 warm-up ones)."""
    import lmkreg  # noqa: F401  (first: sets the OpenMP environment unless the policy is off)
    from lmkreg.threads import configure_threads

    plan = configure_threads(requested_workers=0)
    import torch

    from lmkreg.config.plans import Plans
    from lmkreg.training.network import UNet3D

    plans = Plans.load(plans_path)
    n_landmarks = len(plans.landmarks)
    out = {"threads": torch.get_num_threads(), "thread_plan": plan.describe(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset (library default)"), "configurations": {}}
    for modality, conf in plans.configurations.items():
        gen = torch.Generator().manual_seed(0)
        net = UNet3D(1, n_landmarks, conf.network, head_bias=True)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x = torch.randn(conf.batch_size, 1, *conf.input_size_zyx, generator=gen)
        target = torch.rand(conf.batch_size, n_landmarks, *conf.input_size_zyx, generator=gen)
        train_times, predict_times = [], []
        net.train()
        for i in range(steps + 2):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = ((net(x) - target) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            if i >= 2:
                train_times.append(time.perf_counter() - t0)
        net.eval()
        with torch.no_grad():
            for i in range(steps + 2):
                t0 = time.perf_counter()
                net(x[:1])
                if i >= 2:
                    predict_times.append(time.perf_counter() - t0)
        out["configurations"][modality] = {
            "input_size_zyx": list(conf.input_size_zyx), "batch_size": conf.batch_size,
            "features_per_stage": list(conf.network.features_per_stage),
            "train_step_s": statistics.median(train_times), "train_step_samples_s": train_times,
            "predict_s": statistics.median(predict_times), "predict_samples_s": predict_times}
    return out


# ---- parent: busy loops, subprocesses, ratios ---------------------------------------------------

def _env(setting: str) -> dict:
    env = dict(os.environ)
    for key, value in SETTINGS[setting].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _cpu_busy(seconds: float = 1.0) -> float:
    from lmkreg.threads import allowed_cpus, busy_cores_now

    return busy_cores_now(allowed_cpus(), seconds) or float("nan")


def run_setting(setting: str, plans: Path, steps: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", "--plans", str(plans), "--steps", str(steps)],
                          env=_env(setting), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"setting {setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plans", type=Path, default=DEFAULT_PLANS,
                   help="plans.json whose networks are timed (default: the µ-RegPro example plans)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per measurement, after 2 warm-up steps")
    p.add_argument("--settings", nargs="+", default=["old", "new"], choices=sorted(SETTINGS),
                   help="thread settings to compare (default: old new)")
    p.add_argument("--busy", nargs="+", type=int, default=[0, 1, 2],
                   help="numbers of competing busy-loop processes (default 0 1 2)")
    p.add_argument("-o", "--output", type=Path, default=RESULTS, help="results JSON")
    p.add_argument("--note", default="", help="conditions of the run, stored with the results")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.plans, args.steps)))
        return 0

    sys.path.insert(0, str(ROOT))
    runs = []
    t_start = time.perf_counter()
    for n_busy in args.busy:
        procs = start_busy_loops(n_busy)
        try:
            time.sleep(2.0 if n_busy else 0.0)
            for setting in args.settings:
                load = os.getloadavg()[0]
                busy_before = _cpu_busy()
                result = run_setting(setting, args.plans, args.steps)
                runs.append({"busy_processes": n_busy, "setting": setting, "load_1min_before": load,
                             "cpu_busy_cores_before": busy_before, **result})
                summary = ", ".join(f"{m} step {c['train_step_s']:.3f} s, predict {c['predict_s']:.3f} s"
                                    for m, c in result["configurations"].items())
                print(f"{n_busy} busy, {setting:12s} ({result['threads']} threads): {summary} "
                      f"[load {load:.2f}, busy cores before {busy_before:.2f}]", flush=True)
        finally:
            stop(procs)

    ratios = {}
    for r in runs:
        idle = next((q for q in runs if q["busy_processes"] == 0 and q["setting"] == r["setting"]), None)
        if idle is None or r["busy_processes"] == 0:
            continue
        for m, c in r["configurations"].items():
            base = idle["configurations"][m]
            ratios.setdefault(r["setting"], {}).setdefault(f"busy_{r['busy_processes']}", {})[m] = {
                "train_step": c["train_step_s"] / base["train_step_s"],
                "predict": c["predict_s"] / base["predict_s"]}
    new = ratios.get("new", {})
    target_met = all(v["train_step"] <= TARGET_RATIO for b in new.values() for v in b.values()) if new else None
    result = {"benchmark": "thread_benchmark", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "note": args.note,
              "command": "python benchmarks/thread_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"cpus_allowed": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                          "platform": platform.platform(), "python": platform.python_version()},
              "plans": str(args.plans), "steps": args.steps, "wall_s": time.perf_counter() - t_start,
              "target": f"new settings: busy step <= {TARGET_RATIO}x idle step", "target_met": target_met,
              "ratios_to_idle": ratios, "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    for setting, by_busy in ratios.items():
        for b, by_m in by_busy.items():
            print(f"{setting:12s} {b}: " + ", ".join(f"{m} step {v['train_step']:.2f}x, predict {v['predict']:.2f}x"
                                                    for m, v in by_m.items()))
    print(f"target (new, step <= {TARGET_RATIO}x idle): {'met' if target_met else 'NOT met'}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
