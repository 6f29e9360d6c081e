#!/usr/bin/env python3
"""LLM-PQ and its baselines on the reference's 11 evaluation clusters: predicted (simulated)
throughput per method, speedup over PipeEdge, and solve time, as a markdown table.

    python3 benchmarks/clusters.py [--kernels llm-pq|strata] [STRATA_BINARY]

The example specs name LLM-PQ's kernels (the paper's runtime); --kernels overrides them.
"""
import glob
import json
import os
import re
import subprocess
import sys

import argparse
parser = argparse.ArgumentParser()
parser.add_argument("strata", nargs="?", default=".build/release/strata")
parser.add_argument("--kernels", help="override the specs' kernel set")
args = parser.parse_args()
strata = args.strata
extra = ["--kernels", args.kernels] if args.kernels else []
rows = []
speedups = []
files = sorted(glob.glob("examples/clusters/cluster*.yaml"), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))
print("| cluster | model | devices | LLM-PQ | PipeEdge | Uniform | AdaBits | LLM-PQ / PipeEdge | LLM-PQ solve (s) | LLM-PQ plan |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in files:
    run = subprocess.run([strata, "cluster", "plan", path, "--json"] + extra, capture_output=True, text=True)
    if run.returncode != 0 or not run.stdout.strip():
        sys.exit(f"{path}: strata exited {run.returncode}: {run.stderr.strip()[-2000:]}")
    out = json.loads(run.stdout)
    with open(path) as f:
        text = f.read()
    devices = " + ".join(f"{c}x {t}" for t, c in re.findall(r"type: ([\w.-]+), count: (\d+)", text))
    m = out["methods"]
    def tp(name):
        p = m[name]
        return "infeasible" if p.get("infeasible") else f"{p['throughput_tokens_per_s']:.2f}"
    llmpq, pipeedge = m["llm-pq"], m["pipeedge"]
    ratio = llmpq["throughput_tokens_per_s"] / pipeedge["throughput_tokens_per_s"] if not pipeedge.get("infeasible") else float("nan")
    speedups.append(ratio)
    shape = "; ".join(f"{s['device']} {s['layers'][0]}-{s['layers'][1]} " + "/".join(
        f"{s['bits'].count(b)}x{b}" for b in sorted(set(s['bits']), reverse=True)) for s in llmpq["stages"])
    n = re.findall(r"\d+", os.path.basename(path))[0]
    print(f"| {n} | {out['model']} | {devices} | {tp('llm-pq')} | {tp('pipeedge')} | {tp('uniform')} | {tp('adabits')} | "
          f"{ratio:.2f}x | {llmpq['solve_seconds']:.2f} | {shape} |")
valid = [s for s in speedups if s == s]
print(f"\nLLM-PQ / PipeEdge: mean {sum(valid) / len(valid):.2f}x, min {min(valid):.2f}x, max {max(valid):.2f}x over {len(valid)} clusters")
