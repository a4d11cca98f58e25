#!/usr/bin/env python3
"""The PyTorch side of the reference workloads on a CUDA GPU.

Usage:  python3 xtask/torch_cuda.py PATH/TO/torch_bench.py [--only a,b] [--warmup 2] [--iters 7]

Builds every workload with the models, data, losses and optimiser of `torch_bench.py` (the CPU reference harness),
but on the GPU: `torch.set_default_device("cuda")` before the model and data are made, and
`torch.cuda.synchronize()` after each step so that a step's time is its kernels' time, not the launch time.
Each workload runs in its own process; `peak_gpu_mib` is `torch.cuda.max_memory_allocated`,
`peak_gpu_reserved_mib` `torch.cuda.max_memory_reserved`, `gpu_process_mib` the process's memory as nvidia-smi
lists it (the figure `vesalius bench` reports for its CUDA backend). Prints one JSON line per workload with the same
field names as `vesalius bench`.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time


def load_reference(path):
    spec = importlib.util.spec_from_file_location("torch_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(args):
    import torch

    ref = load_reference(args.reference)
    torch.set_default_device("cuda")
    torch.manual_seed(0)
    model, step, samples, meta = ref.WORKLOADS[args.child]()

    def synced():
        step()
        torch.cuda.synchronize()

    times = []
    first_step_s = _time(synced)  # the first step: cuDNN's algorithm choice, kernel loading, allocator growth
    for _ in range(args.warmup - 1):
        synced()
    # fast workloads get more timed iterations (at least 3 s of timing, at most 50), as the CPU harness does
    iters = max(args.iters, min(50, int(3.0 / max(_time(synced), 1e-6))))
    for _ in range(iters):
        times.append(_time(synced))
    med = statistics.median(times)
    res = {
        "workload": args.child,
        "samples_per_s": samples / med,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "iters": len(times),
        "first_step_s": first_step_s,
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "peak_gpu_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        "gpu_process_mib": _gpu_process_mib(),
        "backend": "torch-cuda " + torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "params": sum(p.numel() for p in model.parameters()),
    }
    res.update(meta)
    print("RESULT " + json.dumps(res), flush=True)


def _gpu_process_mib():
    """GPU memory this process holds as nvidia-smi lists it (context, caching allocator, tensors), as Vesalius's
    bench reports it for the CUDA backend; None where nvidia-smi does not list the process."""
    import os
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[0] == str(os.getpid()):
            try:
                total = (total or 0.0) + float(fields[1])
            except ValueError:
                return None
    return total


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("--only", default="")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        return child(args)
    ref = load_reference(args.reference)
    names = [n for n in args.only.split(",") if n] or list(ref.WORKLOADS)
    for name in names:
        cmd = [sys.executable, __file__, args.reference, "--child", name,
               "--warmup", str(args.warmup), "--iters", str(args.iters)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l[7:] for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        print(line if line else json.dumps({"workload": name, "error": (p.stderr or p.stdout)[-1500:]}), flush=True)


if __name__ == "__main__":
    main()
