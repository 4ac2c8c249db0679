#!/usr/bin/env python3
"""The GPU acceptance check's driver (scripts/gpu-check.sh runs it; see that file).

One prepared run of a few minutes that measures first what we most need to know, and writes
exactly two files under $OUT: summary.json (every check, its verdict and its figures) and
logs.tgz (every command's output). Needs only python3, the built binary and the device's own
libraries. With --cpu-stand-in it runs the same checks on the CPU with small models (what a
GPU-only check needs is skipped and says so), to try the script where there is no GPU.
GPU_CHECK_BREAK=NAME makes the check NAME expect the opposite, to show that it can fail.
"""

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

DEADLINE_S = 330  # the whole run; a check that would start after it is skipped, and says so


class Run:
    def __init__(self, binary, out, cpu, env):
        self.binary = binary
        self.out = out
        self.cpu = cpu
        self.env = env
        self.started = time.monotonic()
        self.logs = {}  # name -> text
        self.checks = []
        self.figures = {}
        self.broken = os.environ.get("GPU_CHECK_BREAK", "")

    def left(self):
        return DEADLINE_S - (time.monotonic() - self.started)

    def device(self):
        return ["--device", "cpu"] if self.cpu else ["--device", "cuda:0", "--no-fallback"]

    def maxbatch(self, name, args, timeout, extra_env=None):
        """Runs the binary; keeps its output in the logs; returns (exit code, stdout)."""
        env = dict(self.env)
        env["MAXBATCH_CACHE"] = os.path.join(self.out, ".cache-" + name)
        env.update(extra_env or {})
        command = [self.binary] + args
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=max(1, min(timeout, self.left())))
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as e:
            code = "timeout"
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        took = time.monotonic() - started
        header = "$ " + " ".join(shlex.quote(a) for a in command)
        if extra_env:
            header = " ".join(f"{k}={v}" for k, v in extra_env.items()) + " " + header
        self.logs[name] = f"{header}\n# exit {code} after {took:.1f} s\n{stdout}\n--- stderr\n{stderr}"
        return code, stdout

    def check(self, name, passed, detail, **figures):
        if name == self.broken:
            passed = not passed
            detail = "DELIBERATELY BROKEN (GPU_CHECK_BREAK): " + detail
        self.checks.append({"check": name, "passed": bool(passed), "detail": detail,
                            "figures": figures})
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}", flush=True)

    def skip(self, name, why):
        self.checks.append({"check": name, "passed": None, "detail": "skipped: " + why,
                            "figures": {}})
        print(f"skip {name}: {why}", flush=True)

    def time_for(self, name, needs):
        if self.left() < needs:
            self.skip(name, f"out of time ({self.left():.0f} s left, needs about {needs} s)")
            return False
        return True


def parse_json(text):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


class MemorySampler:
    """nvidia-smi's memory.used for GPU 0, every 100 ms, in the background."""

    def __init__(self):
        self.samples = []
        self.process = None

    def __enter__(self):
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                 "-i", "0", "-lms", "100"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self.read, daemon=True).start()
        except OSError:
            self.process = None
        return self

    def read(self):
        for line in self.process.stdout:
            try:
                self.samples.append(int(line.strip()) << 20)  # MiB
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.process:
            self.process.terminate()
            self.process.wait()

    def peak(self):
        return max(self.samples) if self.samples else None


def pool_self_test(run):
    if run.cpu:
        return run.skip("pool", "no memory pool on the CPU stand-in")
    code, out = run.maxbatch("pool-self-test", ["pool-self-test", "--device", "cuda:0"], 60)
    test = parse_json(out) or {}
    run.check("pool", code == 0,
              "a 1 GiB tensor made through candle is counted by the pool and given back"
              if code == 0 else f"exit {code}: {out.strip()[:300]}", **test)


def search(run, model):
    """The search with device memory sampled; its checks; the report."""
    if not run.time_for("search", 90):
        return None
    with MemorySampler() as sampler:
        code, out = run.maxbatch("search", model + run.device() + ["--json", "--no-cache"], 240)
    report = parse_json(out)
    if code != 0 or not report:
        run.check("search", False, f"exit {code}; see logs/search.log")
        return None
    trials = report["trials"]
    device = report["device"]
    max_size = report["max_batch_size"]
    at_max = next((t for t in trials if t["batch_size"] == max_size and t["outcome"] == "fits"), {})
    ooms = [t for t in trials if t["outcome"] == "oom"]
    run.check("search", not report.get("max_is_cap") or run.cpu,
              f"max {max_size}, power of two {report['largest_power_of_two']}, recommended "
              f"{report['recommended_batch_size']}, {len(trials)} trials; "
              + ("bounded by memory" if not report.get("max_is_cap") else "bounded by the cap"),
              max=max_size, trials=len(trials), capacity_bytes=device["capacity_bytes"],
              meter=device.get("meter"), overhead_bytes=device.get("overhead_bytes"))
    # The figure most wanted from a GPU: how far the estimate from shapes, which seeds the
    # search, is from the first trial's measured peak there (candle's CUDA kernels, cuBLAS's
    # workspaces and the pool's granularity are in the one, not the other).
    seeding = report.get("seeding") or {}
    first = seeding.get("first_trial") or {}
    if first:
        predicted, measured = first["predicted_peak_bytes"], first["measured_peak_bytes"]
        run.check("seeding", True,
                  f"seeded at {seeding['seed']}, {report.get('search_trials')} search trials; "
                  f"at {first['batch_size']} the estimate predicted {predicted >> 20} MiB, the "
                  f"trial measured {'' if first.get('complete') else '>= '}{measured >> 20} MiB "
                  f"({(measured - predicted) / predicted:+.2%})",
                  seed=seeding["seed"], search_trials=report.get("search_trials"),
                  predicted_peak_bytes=predicted, measured_peak_bytes=measured,
                  complete=first.get("complete"))
    else:
        run.check("seeding", False, "the search was not seeded by the estimate from shapes")
    leaks = [(t["batch_size"], t.get("leaked_bytes")) for t in trials if not t.get("predicted")]
    unclean = [l for l in leaks if l[1] not in (0,) and not (run.cpu and l[1] is None)]
    run.check("leaks", not unclean,
              "every trial gave back what it took" if not unclean
              else f"trials that left memory behind or could not tell: {unclean}",
              leaked_bytes=leaks)
    run.check("oom-errors", bool(ooms),
              f"{len(ooms)} out-of-memory trials; their errors: "
              + "; ".join(sorted({(t.get('detail') or '')[:160] for t in ooms})),
              details=[t.get("detail") for t in ooms])
    peak = at_max.get("peak_bytes")
    reserved = at_max.get("reserved_bytes")
    device_peak = sampler.peak()
    if not run.cpu and peak and reserved and device_peak:
        overhead = device.get("overhead_bytes") or 0
        meter_peak = max((t.get("reserved_bytes") or 0) for t in trials) + overhead
        run.check("device-vs-meter", abs(device_peak - meter_peak) <= max(0.05 * device_peak, 256 << 20),
                  f"nvidia-smi's peak {device_peak >> 20} MiB, the meter's (largest pool "
                  f"reservation + overhead) {meter_peak >> 20} MiB; at the maximum the pool "
                  f"reserved {reserved / peak:.3f}× what it handed out",
                  device_peak_bytes=device_peak, meter_peak_bytes=meter_peak,
                  fragmentation_at_max=reserved / peak)
    elif run.cpu:
        run.skip("device-vs-meter", "no nvidia-smi on the CPU stand-in")
    else:
        run.check("device-vs-meter", False, "no samples, or no peak at the maximum")
    return report


def check_boundary(run, model, report):
    """check at MAX and MAX+1, then again with eagerly loaded modules: the same verdicts."""
    if not report or not run.time_for("check-max", 60):
        return
    max_size = report["max_batch_size"]
    for label, env in [("", None), ("-eager", {"CUDA_MODULE_LOADING": "EAGER"})]:
        verdicts = {}
        for size, expected in [(max_size, 0), (max_size + 1, 1)]:
            code, out = run.maxbatch(f"check-{size}{label}", ["check"] + model + run.device()
                                     + ["--batch-size", str(size), "--json", "--no-cache"],
                                     120, env)
            trial = parse_json(out) or {}
            verdicts[size] = (code, trial.get("detail"))
            name = "check-max" if size == max_size else "check-max-plus-one"
            run.check(name + label, code == expected,
                      f"check {size}: exit {code} (expected {expected})"
                      + (f"; {trial.get('detail')}" if trial.get("detail") else ""),
                      peak_bytes=trial.get("peak_bytes"), trial_detail=trial.get("detail"))
        run.figures["check" + (label or "-lazy")] = verdicts


def cublas_workspace(run, model):
    if run.cpu:
        return run.skip("cublas-workspace", "cuBLAS runs on a GPU only")
    if not run.time_for("cublas-workspace", 40):
        return
    seen = {}
    for label, env in [("default", None), ("no-workspace", {"CUBLAS_WORKSPACE_CONFIG": ":0:0"})]:
        code, out = run.maxbatch(f"workspace-{label}", model + run.device()
                                 + ["--max-batch", "1", "--json", "--no-cache"], 90, env)
        r = parse_json(out) or {}
        t = (r.get("trials") or [{}])[0]
        seen[label] = {"exit": code, "peak_bytes": t.get("peak_bytes"),
                       "reserved_bytes": t.get("reserved_bytes"),
                       "overhead_bytes": r.get("device", {}).get("overhead_bytes")}
    d, n = seen["default"], seen["no-workspace"]
    if None in (d["peak_bytes"], n["peak_bytes"], d["overhead_bytes"], n["overhead_bytes"]):
        return run.check("cublas-workspace", False, f"a run failed: {seen}", **seen)
    in_pool = d["peak_bytes"] - n["peak_bytes"]
    outside = d["overhead_bytes"] - n["overhead_bytes"]
    where = ("in the pool" if in_pool > outside else "outside the pool")
    run.check("cublas-workspace", True,
              f"batch size 1 with cuBLAS's workspace against without: the pool's peak moved "
              f"{in_pool >> 10} KiB, what is held outside it {outside >> 10} KiB: the "
              f"workspace lives {where}", pool_delta_bytes=in_pool,
              outside_delta_bytes=outside, **seen)


def element_cap(run, fixtures, total_bytes):
    if run.cpu:
        return run.skip("element-cap", "the 2^31-element cap applies to CUDA only")
    if not run.time_for("element-cap", 60):
        return
    # The kernels themselves: one u32 tensor at 2^31 elements and at 2^31 + 2^30, where the
    # 32-bit loop index wraps and a third of the elements are written twice.
    probes = {}
    for label, n in [("at-cap", 1 << 31), ("past-cap", (1 << 31) + (1 << 30))]:
        code, out = run.maxbatch(f"probe-{label}", ["element-probe", "--device", "cuda:0",
                                                    "--elements", str(n)], 60)
        probes[label] = dict(parse_json(out) or {}, exit=code)
    at, past = probes["at-cap"], probes["past-cap"]
    ratio = None
    if at.get("affine_seconds") and past.get("affine_seconds"):
        ratio = (past["affine_seconds"] / past["elements"]) / (at["affine_seconds"] / at["elements"])
    run.check("element-cap-kernels", at.get("exact") is True,
              f"2^31 elements: every element written once ({at.get('affine_seconds')} s); "
              f"2^31 + 2^30: exit {past.get('exit')}, exact {past.get('exact')}, "
              f"{past.get('affine_seconds')} s"
              + (f", {ratio:.2f}× the time an element" if ratio else ""),
              at_cap=at, past_cap=past, per_element_ratio=ratio)
    # The check past the cap is refused before anything is built.
    config = ["--config", os.path.join(fixtures, "wide-vocab-gpt2.json"), "--seq-len", "1024",
              "--dtype", "bf16"]
    refused, _ = run.maxbatch("cap-9-refused", ["check"] + config + run.device()
                              + ["--batch-size", "9", "--no-cache"], 30)
    run.check("element-cap-refused", refused == 2,
              f"check past the cap: exit {refused} (expected 2, refused before any trial)")
    # A training step on both sides of the cap (2^18 vocabulary × 1024 tokens: 2^28 logits a
    # sample, 8 samples to 2^31), where the card holds 9 samples' step (about 104 GiB
    # predicted): the H200, not the H100.
    if not total_bytes or total_bytes < (120 << 30):
        return run.skip("element-cap-step", "a 9-sample step of the wide-vocabulary config needs "
                        "about 104 GiB (an H200); the probe above stands in")
    times = {}
    for size, extra in [(8, []), (9, ["--ignore-element-cap"])]:
        code, out = run.maxbatch(f"cap-{size}", ["check"] + config + run.device()
                                 + ["--batch-size", str(size), "--json", "--no-cache"] + extra,
                                 60)
        trial = parse_json(out) or {}
        seconds = trial.get("step_seconds")
        times[size] = {"exit": code, "step_seconds": seconds,
                       "per_sample": seconds / size if seconds else None,
                       "detail": trial.get("detail")}
    under, over = times[8], times[9]
    slower = (over["per_sample"] / under["per_sample"]
              if under["per_sample"] and over["per_sample"] else None)
    run.check("element-cap-step", under["exit"] in (0, 1),
              f"at 2^31 elements (8 samples): exit {under['exit']}, {under['step_seconds']} s "
              f"a step; past it (9, forced): exit {over['exit']}, {over['step_seconds']} s"
              + (f" ({slower:.2f}× the time a sample)" if slower else "")
              + ("; it did not finish in 60 s" if over["exit"] == "timeout" else ""),
              under=under, over=over, per_sample_ratio=slower)


def soak_and_estimate(run, model, report):
    if not report:
        return
    rec = report.get("recommended_batch_size")
    if rec and run.time_for("soak", 60):
        code, out = run.maxbatch("soak", ["check"] + model + run.device()
                                 + ["--batch-size", str(rec), "--verify-steps", "50", "--no-cache"],
                                 150)
        run.check("soak", code == 0, f"50 consecutive steps at the recommended {rec}: exit {code}; "
                  + " ".join(l.strip() for l in out.splitlines() if "verification" in l or "FAILED" in l))
    capacity = report["device"]["capacity_bytes"]
    estimate_model = []
    skip = False
    for a in model:  # the model without its budget: the estimate is given the capacity
        if skip or a == "--memory":
            skip = not skip
            continue
        estimate_model.append(a)
    code, out = run.maxbatch("estimate", ["estimate"] + estimate_model
                             + ["--memory", str(capacity), "--json"], 30)
    e = parse_json(out) or {}
    sizes = ((e.get("plans") or [{}])[0] or {}).get("sizes") or {}
    predicted = sizes.get("predicted_max")
    measured = report["max_batch_size"]
    run.check("estimate", predicted is not None,
              f"the estimate for the measured capacity ({capacity >> 20} MiB) predicts {predicted}, "
              f"the search measured {measured}"
              + (f" ({(predicted - measured) / measured:+.1%})" if predicted and measured else ""),
              predicted=predicted, measured=measured)


def generation(run):
    """A generation search (--mode generate): the largest number of sequences prefilled and
    decoded with a KV cache on the device, the estimate's first prediction against the
    measured peak, the cache's bytes per token and the prefill and decode throughput."""
    if not run.time_for("generation", 60):
        return
    if run.cpu:
        model = ["--model", "transformer-tiny", "--memory", "64MiB", "--prompt-len", "16",
                 "--new-tokens", "16"]
    else:  # about 10 MB a sequence: thousands fit, below the element cap (8192)
        model = ["--model", "transformer-small", "--prompt-len", "128", "--new-tokens", "384"]
    code, out = run.maxbatch("generation", model + ["--mode", "generate"] + run.device()
                             + ["--json", "--no-cache"], 180)
    r = parse_json(out)
    if code != 0 or not r:
        run.check("generation", False, f"exit {code}; see logs/generation.log")
        return
    max_size = r["max_batch_size"]
    trials = r["trials"]
    at_max = next((t for t in trials if t["batch_size"] == max_size and t["outcome"] == "fits"), {})
    times = {p["phase"]: p["seconds"] for p in at_max.get("phase_seconds", [])}
    prefill_s = times.get("prefill")
    decode_s = (times.get("decode") or 0) - (prefill_s or 0)
    prompt, new = (int(model[model.index("--prompt-len") + 1]),
                   int(model[model.index("--new-tokens") + 1]))
    first = (r.get("seeding") or {}).get("first_trial") or {}
    error = None
    if first:
        error = (first["measured_peak_bytes"] - first["predicted_peak_bytes"]) / first["predicted_peak_bytes"]
    exact = any(t["batch_size"] == max_size + 1 and t["outcome"] == "oom" for t in trials)
    run.check("generation", exact or r.get("max_is_cap"),
              f"max {max_size} sequences ({'capped' if r.get('max_is_cap') else 'max + 1 ran out of memory'}), "
              f"{len(trials)} trials; KV cache {r['model'].get('kv_cache_bytes_per_token')} B a token; "
              + (f"estimate {first['predicted_peak_bytes'] >> 20} MiB against {first['measured_peak_bytes'] >> 20} "
                 f"MiB measured at {first['batch_size']} ({error:+.2%}); " if first else "not seeded; ")
              + (f"prefill {max_size * prompt / prefill_s:.0f} tokens/s, decode "
                 f"{max_size * new / decode_s:.0f} tokens/s at the maximum" if prefill_s and decode_s > 0
                 else "no phase times"),
              max=max_size, trials=len(trials),
              kv_cache_bytes_per_token=r["model"].get("kv_cache_bytes_per_token"),
              estimate_error=error, prefill_seconds=prefill_s, decode_seconds=decode_s,
              phase_peaks=at_max.get("phase_peaks"))


def write_out(run, started_wall, header):
    failed = [c["check"] for c in run.checks if c["passed"] is False]
    summary = dict(header)
    summary.update({
        "seconds": round(time.monotonic() - run.started, 1),
        "passed": not failed,
        "failed": failed,
        "checks": run.checks,
        "figures": run.figures,
        "started": started_wall,
    })
    with open(os.path.join(run.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with tarfile.open(os.path.join(run.out, "logs.tgz"), "w:gz") as tar:
        for name, text in run.logs.items():
            data = text.encode()
            info = tarfile.TarInfo(f"logs/{name}.log")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return not failed


def nvidia_libraries():
    """The CUDA 13 runtime libraries of PyTorch's nvidia-* wheels, when they are installed."""
    try:
        import nvidia  # a namespace package of the nvidia-* wheels
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        for name in sorted(os.listdir(base)):
            lib = os.path.join(base, name, "lib")
            if os.path.isdir(lib):
                found.append(lib)
    return found


def preflight(binary, cpu, env):
    """Facts about the machine, and what stops the run before it starts (or None)."""
    header = {"binary": binary, "cpu_stand_in": cpu}
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        return header, f"no executable at {binary}: build it with scripts/build-cuda.sh"
    if cpu:
        return header, None
    libraries = nvidia_libraries()
    if libraries:
        env["LD_LIBRARY_PATH"] = ":".join(libraries + [env.get("LD_LIBRARY_PATH", "")])
    header["library_dirs"] = libraries
    # Captured first, then searched: `ldd | grep -q` under pipefail can report a match as a
    # failure when grep exits before ldd has written everything.
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env).stdout
    missing = [l.strip() for l in ldd.splitlines() if "not found" in l]
    header["missing_libraries"] = missing
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader,nounits", "-i", "0"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return header, "nvidia-smi is not here: no NVIDIA driver"
    cuda = None
    for word in smi.replace("|", " ").split("CUDA Version:")[1:2]:
        cuda = word.split()[0]
    parts = [p.strip() for p in query.split(",")]
    if len(parts) == 3:
        header.update(gpu=parts[0], total_bytes=int(float(parts[1])) << 20, driver=parts[2])
    header["driver_cuda"] = cuda
    if cuda is None or tuple(int(x) for x in cuda.split(".")[:2]) < (13, 0):
        return header, f"the driver supports CUDA {cuda}; this binary needs 13.0 or newer"
    if missing:
        return header, "missing libraries: " + "; ".join(missing)
    return header, None


def guarded(run, name, check, *args):
    """Runs a check; a fault in the script itself fails that check, not the whole run."""
    try:
        return check(*args)
    except Exception as error:  # noqa: BLE001 - reported, and the run goes on
        run.check(name + "-script", False, f"the script failed: {error!r}")
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--cpu-stand-in", action="store_true")
    parser.add_argument("--fixtures", required=True)
    args = parser.parse_args()
    out = os.environ.get("OUT") or "gpu-check-out"
    os.makedirs(out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="gpu-check-")
    env = dict(os.environ)
    header, stop = preflight(args.binary, args.cpu_stand_in, env)
    run = Run(args.binary, scratch, args.cpu_stand_in, env)
    started_wall = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if stop:
        run.check("preflight", False, stop)
    else:
        # The model the GPU runs out of memory with on an 80 GB and a 141 GB card alike
        # (about 68 and 122 samples predicted, below its 131-sample element cap); on the
        # CPU stand-in a tiny one under a small budget.
        model = (["--model", "transformer-tiny", "--seq-len", "32", "--memory", "160MiB"]
                 if run.cpu else ["--model", "transformer-small"])
        guarded(run, "pool", pool_self_test, run)
        report = guarded(run, "search", search, run, model)
        guarded(run, "check-max", check_boundary, run, model, report)
        guarded(run, "cublas-workspace", cublas_workspace, run, model)
        guarded(run, "element-cap", element_cap, run, args.fixtures, header.get("total_bytes"))
        guarded(run, "soak", soak_and_estimate, run, model, report)
        guarded(run, "generation", generation, run)
    run.out = out
    ok = write_out(run, started_wall, header)
    print(f"{'passed' if ok else 'FAILED'} in {time.monotonic() - run.started:.0f} s; "
          f"{out}/summary.json, {out}/logs.tgz")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
