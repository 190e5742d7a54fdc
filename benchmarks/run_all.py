"""Every benchmark that can run on this machine, one command: a table on stdout and a JSON file.

    python benchmarks/run_all.py [--quick] [--json OUT] [--parts overhead,hooks,startup,memory,zeus,gpu]
                                 [--zeus-path DIR]

Each part runs in a fresh interpreter (``_common.run_child``): overhead per framework (Keras with
``KERAS_BACKEND=torch``), per-hook costs, import times, memory, a Zeus probe and the GPU
benchmark's ``--dry-run`` (the real GPU run is ``benchmarks/gpu.py`` on a CUDA machine).
``--quick`` shrinks every part to a smoke run (seconds): its figures are not meaningful.
``--zeus-path``: a directory holding the ``zeus`` package (e.g. ``pip install --no-deps --target DIR zeus``),
added to the children's ``PYTHONPATH`` so Zeus joins the Lightning overhead comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, machine, run_child  # noqa: E402

PARTS = ("overhead", "hooks", "startup", "memory", "zeus", "gpu")

ZEUS_PROBE = r"""
import json, time
try:
    import zeus
    from zeus.monitor import ZeusMonitor
except Exception as error:
    print(json.dumps({"importable": False, "reason": repr(error)}))
else:
    out = {"importable": True, "version": getattr(zeus, "__version__", None)}
    try:
        monitor = ZeusMonitor()
        monitor.begin_window("probe")
        time.sleep(0.2)
        m = monitor.end_window("probe")
        out.update(monitor_created=True, gpu_indices=list(monitor.gpu_indices),
                   cpu_indices=list(getattr(monitor, "cpu_indices", []) or []),
                   measurement={"time_s": m.time, "gpu_energy": m.gpu_energy, "cpu_energy": m.cpu_energy})
    except Exception as error:
        out.update(monitor_created=False, reason=repr(error))
    print(json.dumps(out, default=str))
"""


def zeus_probe(env: dict) -> dict:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", ZEUS_PROBE], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"importable": False, "reason": proc.stderr[-1000:]}
    if not result.get("importable"):
        result["note"] = ("zeus is not installed here. `pip download zeus --no-deps` fetches the wheel; "
                          "install it apart (pip install --no-deps --target DIR zeus) and pass --zeus-path DIR.")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, meaningless figures")
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--frameworks", default="lightning,keras,hf", help="overhead: which frameworks")
    parser.add_argument("--rounds", type=int, default=None, help="overhead: A/B rounds (default 11, quick 2)")
    parser.add_argument("--sizes", default="full,long",
                        help="overhead: full (~0.3 s epochs), long (~1.2 s epochs), or both (comma-separated)")
    parser.add_argument("--zeus-path", default=os.environ.get("GREENCALLBACKS_BENCH_ZEUS_PATH"))
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {PARTS}")
    quick = ["--quick"] if args.quick else []
    zeus_env = {}
    if args.zeus_path:
        zeus_env["PYTHONPATH"] = os.pathsep.join(p for p in (args.zeus_path, os.environ.get("PYTHONPATH", "")) if p)

    results: dict = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "machine": machine()}
    t0 = time.perf_counter()
    if "overhead" in parts:
        results["overhead"] = {}
        sizes = ["full"] if args.quick else [s for s in args.sizes.split(",") if s]
        for size in sizes:
            for framework in args.frameworks.split(","):
                env = {"KERAS_BACKEND": "torch"} if framework == "keras" else {}
                if framework == "lightning":
                    env.update(zeus_env)
                extra = ["--rounds", str(args.rounds)] if args.rounds else []
                if size == "long":
                    extra.append("--long-epochs")
                key = framework if size == "full" else f"{framework}-long"
                results["overhead"][key] = run_child("overhead.py", ["--framework", framework, *quick, *extra], env)
                _progress(f"overhead {key}", results["overhead"][key])
    if "hooks" in parts:
        results["hooks"] = run_child("hooks.py", quick, {"KERAS_BACKEND": "torch"})
        _progress("hooks", results["hooks"])
    if "startup" in parts:
        results["startup"] = run_child("startup.py", quick)
        _progress("startup", results["startup"])
    if "memory" in parts:
        results["memory"] = run_child("memory.py", quick)
        _progress("memory", results["memory"])
    if "zeus" in parts:
        results["zeus"] = zeus_probe(zeus_env)
    if "gpu" in parts:
        results["gpu_dry_run"] = _gpu_dry_run()
    results["wall_s"] = time.perf_counter() - t0

    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        print(f"\nwritten: {args.json}")
    failed = [name for name, value in results.items() if isinstance(value, dict) and "error" in value]
    failed += [f"overhead.{k}" for k, v in results.get("overhead", {}).items() if "error" in v]
    if failed:
        print(f"\nparts that failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _gpu_dry_run() -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gcb-gpu-dry-") as tmp:
        out = Path(tmp) / "gpu.json"
        proc = subprocess.run([sys.executable, str(BENCH_DIR / "gpu.py"), "--dry-run", "--json", str(out)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not out.exists():
            return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
        data = json.loads(out.read_text())
    return {"exit_code": proc.returncode, "summary": data["summary"], "wall_s": data["wall_s"]}


def _progress(name: str, result: dict) -> None:
    status = "FAILED: " + result["error"] if "error" in result else f"done in {result.get('wall_s', 0):.1f} s"
    print(f"[run_all] {name}: {status}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- table
def table(results: dict) -> str:
    m = results["machine"]
    lines = [f"greencallbacks benchmarks  {results['date']}  {m['cpu_model']}, {m['usable_cpus']} CPUs, "
             f"Python {m['python']}{'  (QUICK: smoke sizes, figures not meaningful)' if results['quick'] else ''}", ""]
    if "overhead" in results:
        lines += ["Overhead (median of per-round ratios, with / without, and its 95 % interval; target <= 1.01).",
                  "baseline_again is the baseline against itself: the noise floor. 'inside' is the time measured",
                  "inside greencallbacks (hooks + meter thread CPU) over the baseline: the added work, without that noise.",
                  f"  {'framework':15s} {'tool':22s} {'ratio':>7s} {'95 % interval':>15s} {'rounds':>6s} {'epoch s':>7s} {'ms/step':>7s}"]
        for framework, r in results["overhead"].items():
            if "error" in r:
                lines.append(f"  {framework:15s} ERROR {r['error']}")
                continue
            epoch_s = r["baseline_s_median"] / r["epochs"]
            for tool, s in r["tools"].items():
                low, high = s["ratio_ci95"]
                lines.append(f"  {framework:15s} {tool:22s} {s['ratio_median']:7.3f} {f'{low:.3f}-{high:.3f}':>15s} "
                             f"{s['pairs']:6d} {epoch_s:7.2f} {r['baseline_ms_per_step']:7.2f}")
            a = r.get("attribution")
            if a:
                lines.append(f"  {framework:15s} {'greencallbacks inside':22s} {a['attributed_ratio']:7.3f} "
                             f"{'(' + format(a['inside_tool_s'] * 1e3, '.1f') + ' ms/run)':>15s}")
        lines.append("")
    h = results.get("hooks")
    if h and "error" not in h:
        lines += ["Per step (microseconds; target < 5)",
                  f"  lightning on_train_batch_end           {h['lightning']['on_train_batch_end_us']:8.2f}",
                  f"  lightning state_key (per hook call)    {h['lightning']['state_key_us']:8.2f}",
                  f"  lightning dispatch added / step        {h['lightning']['step_dispatch_added_us']:8.2f}"
                  f"   (an empty Callback: {h['lightning']['empty_callback_step_dispatch_added_us']:.2f})",
                  f"  hf training_step wrapper               {h['hf']['training_step_wrapper_us']:8.2f}",
                  f"  hf on_step_end                         {h['hf']['on_step_end_us']:8.2f}",
                  f"  hf events added / step                 {h['hf']['step_events_added_us']:8.2f}"
                  f"   (an empty TrainerCallback: {h['hf']['empty_callback_step_events_added_us']:.2f})",
                  f"  keras training batch hooks             {'none' if not h['keras']['training_batch_hooks_overridden'] else h['keras']['training_batch_hooks_overridden']}"
                  f"   (on_predict_batch_end: {h['keras']['on_predict_batch_end_us']:.2f})",
                  "Per boundary (microseconds)"]
        for name, s in h["boundary"]["sensors"].items():
            lines.append(f"  read {name:12s} ({s['method']:9s})       {s['median_us']:8.1f}")
        sim = h.get("simulated_gpu_boundaries")
        if sim:
            lines.append("Per boundary on a simulated GPU host (fake NVML, H100 read latency), training thread, us "
                         "median / p99; max per-epoch GPU error against the exact energy")
            for label in ("cpu_host_control", "counter_read_at_boundary", "off_thread"):
                v = sim[label]
                err = {k: e for k, e in v["epoch_gpu_max_abs_relative_error"].items() if e is not None}
                lines.append(f"  {label:26s} boundary {v['boundary_us_median']:8.1f} / {v['boundary_us_p99']:8.1f}   "
                             f"meter {v['meter_us_median']:8.1f} / {v['meter_us_p99']:8.1f}"
                             + "".join(f"   epoch error ({k}) {100 * e:.2f} %" for k, e in err.items()))
        shares = h.get("fit_shares")
        if shares:
            lines.append("Share of a fit inside the callback (training thread; meter thread CPU apart)")
            for key, v in shares.items():
                if isinstance(v, dict) and "training_thread_share" in v:
                    lines.append(f"  {key:26s} {100 * v['training_thread_share']:6.3f} %   ({v['training_thread_ms']:.1f} ms in "
                                 f"{v['epochs']} epochs of {v['epoch_s']:.2f} s; {v['us_per_hook_call']:.1f} us per hook call; "
                                 f"meter thread {v['meter_thread_cpu_ms']:.1f} ms CPU)")
            p = shares["lightning_profiled"]
            lines.append(f"  Lightning SimpleProfiler, us per hook call: ours {p['greencallbacks']['us_per_hook_call']:.1f}, "
                         f"empty callback {p['empty_callback']['us_per_hook_call']:.1f}")
        lines += [f"  Meter.snapshot                         {h['boundary']['snapshot_us']:8.1f}",
                  f"  one phase, in memory                   {h['boundary']['phase_begin_end_in_memory_us']:8.1f}",
                  f"  one phase, record written             {h['boundary']['phase_begin_end_records_written_us']:8.1f}",
                  f"  its end after 10 ms of work           {h['boundary']['phase_end_records_written_after_10ms_work_us']:8.1f}"
                  f"   (a 10-item dict loop alike: {h['boundary']['reference_after_10ms_work_us']:.1f})",
                  "Sensor reads per epoch (train + validation epoch)"]
        for framework, r in h["reads"].items():
            per = ", ".join(f"{k} {v:.2f}" for k, v in r["reads_per_epoch"].items())
            polls = ", ".join(f"{k} {v:.1f}/s" for k, v in r["polls_per_s"].items())
            lines.append(f"  {framework:10s} {per}   background polls: {polls}")
        lines.append("")
    s = results.get("startup")
    if s and "error" not in s:
        lines.append("Import time (ms, median of fresh interpreters)")
        for name, v in s.items():
            if isinstance(v, dict):
                lines.append(f"  {name:52s} {v.get('median_ms', float('nan')):8.1f}" if "median_ms" in v else f"  {name:52s} ERROR")
        lines.append(f"  import greencallbacks pulls in no framework: {s.get('core_imports_no_framework')}")
        lines.append("")
    mem = results.get("memory")
    if mem and "error" not in mem:
        c, lt = mem["core"], mem["lightning"]
        lines += ["Memory",
                  f"  core tracker, {c['phases']} phases: RSS {c['rss_mib_first']:.1f} -> {c['rss_mib_last']:.1f} MiB "
                  f"(max {c['rss_mib_max']:.1f}; {c['rss_kib_per_1000_phases_slope_second_half']:.0f} KiB/1000 phases, 2nd half), "
                  f"threads {c['threads_first']} -> {c['threads_last']} (max {c['threads_max']})",
                  f"    records held {c['records_held_at_end']} (cap {c['records_kept_in_memory_cap']}), "
                  f"{(c['bytes_per_record_held'] or 0):.0f} B/record; heap after cap: "
                  f"{c['python_heap_bytes_per_phase_slope_second_half']:.0f} B/phase; {c['us_per_phase_records_written']:.0f} us/phase",
                  f"  lightning, {lt['fits']} fits x {lt['epochs_per_fit']} epochs: RSS {lt['rss_mib_first']:.1f} -> "
                  f"{lt['rss_mib_last']:.1f} MiB (max {lt['rss_mib_max']:.1f}), threads during fit max {lt['threads_max']}, "
                  f"after each fit {lt['threads_after_each_fit']} (before {lt['threads_before']})"]
        lb = mem.get("lightning_without_callback")
        if lb:
            lines.append(f"    growth over the second half: {lt['rss_kib_per_1000_epochs_slope_second_half']:.0f} KiB/1000 epochs "
                         f"with the callback, {lb['rss_kib_per_1000_epochs_slope_second_half']:.0f} without (same fits, run first)")
        heap = mem.get("lightning_heap_held_by_tool")
        if heap:
            held = ", ".join(f"epoch {e}: {b / 1024:.0f} KiB" for e, b in heap["held_bytes_by_epoch"].items())
            lines.append(f"  Python heap held by greencallbacks code in one {heap['epochs']}-epoch fit (tracemalloc): {held}; "
                         f"{heap['bytes_per_epoch_second_half']:.0f} B/epoch over the second half")
        sweep = mem.get("report_of_a_sweep")
        if sweep:
            lines.append(f"  report over a sweep of {sweep['runs']} runs ({sweep['records']} records): {sweep['seconds']:.1f} s, "
                         f"{sweep['us_per_record']:.0f} us/record, peak Python heap {sweep['peak_python_heap_mib']:.0f} MiB")
        lines.append("")
    z = results.get("zeus")
    if z:
        lines.append("Zeus: " + (f"{z.get('version')} importable; ZeusMonitor on this CPU machine: "
                                 + (f"gpus {z.get('gpu_indices')}, cpus {z.get('cpu_indices')}, measurement {z.get('measurement')}"
                                    if z.get("monitor_created") else f"refused: {z.get('reason')}")
                                 if z.get("importable") else f"not importable ({z.get('reason')})"))
    g = results.get("gpu_dry_run")
    if g:
        lines.append("GPU benchmark: " + ("dry run OK (simulated GPU; real run: benchmarks/gpu.py on CUDA)"
                                          if "error" not in g else f"dry run FAILED {g['error']}"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
