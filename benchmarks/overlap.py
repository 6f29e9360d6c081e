#!/usr/bin/env python3
"""Overlap on vs off, side by side: `strata bench` under a disk-bound and a host-bound policy,
alternating runs, medians and ratios as JSON.

    python3 benchmarks/overlap.py --model STORE --offload-dir DIR [--repeat 3]
"""
import argparse
import json
import statistics
import subprocess

POLICIES = {
    "disk-bound (weights 100% disk)": ["--percent", "0", "0", "100", "0", "100", "0"],
    "host-bound (weights 100% host)": ["--percent", "0", "100", "100", "0", "100", "0"],
}


def run(args, policy, overlap):
    cmd = [args.strata, "bench", "--model", args.model, "--batch-size", str(args.batch_size), "--prompt-len", str(args.prompt_len),
           "--gen-len", str(args.gen_len), "--gpu-batch-size", str(args.batch_size), "--num-gpu-batches", "1",
           "--offload-dir", args.offload_dir, "--overlap", "true" if overlap else "false", "--json"] + policy
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--offload-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--strata", default=".build/release/strata")
    args = ap.parse_args()
    result = {"model": args.model, "batch_size": args.batch_size, "prompt_len": args.prompt_len, "gen_len": args.gen_len}
    for name, policy in POLICIES.items():
        on, off = [], []
        for _ in range(args.repeat):
            on.append(run(args, policy, True))
            off.append(run(args, policy, False))
        row = {}
        for key in ["prefill_tokens_per_s", "decode_tokens_per_s", "total_tokens_per_s"]:
            a, b = statistics.median(r[key] for r in on), statistics.median(r[key] for r in off)
            row[key] = {"overlap": round(a, 3), "sequential": round(b, 3), "ratio": round(a / b, 3)}
        result[name] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
