#!/usr/bin/env python3
"""Strata vs llama.cpp vs transformers on the same GGUF file, side by side in one run.

For each batch size B: prompts of --prompt-len random tokens, --gen-len new tokens (EOS
ignored), 2 threads. Strata runs `strata bench --json` on the file (Q4_0/Q4_1/Q8_0 layers as
stored); llama.cpp runs `llama-batched-bench` on the same file (its own weight type, built from
the checkout given, all batch sizes in one process); transformers loads the file with
`gguf_file=` (dequantized) in its best CPU dtype, bf16 by default (AVX512-BF16/AMX). Rounds
alternate the three systems so each sees the same machine noise; medians are reported, with
Strata's ratio to each. Generation throughput is B * gen / (prefill time + decode time) for all
three (llama.cpp: T_PP + T_TG).

    python3 benchmarks/real_model.py --model ~/.cache/strata/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --llama-cpp /path/to/llama.cpp --batches 1,16,32 --repeat 3
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare_transformers import cpu_info  # noqa: E402


def strata(args, b):
    cmd = [args.strata, "bench", "--model", args.model, "--batch-size", str(b), "--prompt-len", str(args.prompt_len),
           "--gen-len", str(args.gen_len), "--threads", str(args.threads), "--json", "--quiet"]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {"prefill": r["prefill_tokens_per_s"], "decode": r["decode_tokens_per_s"], "total": r["total_tokens_per_s"]}


def llama_cpp(args, batches):
    binary = args.llama_cpp
    if os.path.isdir(binary):
        binary = os.path.join(binary, "build", "bin", "llama-batched-bench")
    context = max(batches) * (args.prompt_len + args.gen_len) + 64
    cmd = [binary, "-m", args.model, "-c", str(context), "-b", "2048", "-ub", "512", "-npp", str(args.prompt_len),
           "-ntg", str(args.gen_len), "-npl", ",".join(map(str, batches)), "-t", str(args.threads), "-tb", str(args.threads),
           "--output-format", "jsonl"] + args.llama_args.split()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    results = {}
    for line in (out.stdout + out.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and '"pl"' in line:
            r = json.loads(line)
            b = r["pl"]
            results[b] = {"prefill": b * args.prompt_len / r["t_pp"], "decode": b * args.gen_len / r["t_tg"],
                          "total": b * args.gen_len / (r["t_pp"] + r["t_tg"])}
    missing = [b for b in batches if b not in results]
    if missing:
        raise SystemExit(f"llama-batched-bench gave no result for B={missing}:\n{out.stderr[-2000:]}")
    return results


def transformers(args, b):
    cmd = [sys.executable, os.path.join(HERE, "compare_transformers.py"), "--hf-worker", "--model", args.model,
           "--batch-size", str(b), "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len),
           "--threads", str(args.threads), "--hf-dtype", args.hf_dtype]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    prefill_seconds = b * args.prompt_len / r["prefill_tokens_per_s"]
    decode_seconds = max(r["wall_seconds"] - prefill_seconds, 1e-9)
    return {"prefill": r["prefill_tokens_per_s"], "decode": b * args.gen_len / decode_seconds, "total": r["total_tokens_per_s"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp checkout (built) or the llama-batched-bench binary")
    ap.add_argument("--llama-args", default="", help="extra llama-batched-bench arguments (e.g. -nr)")
    ap.add_argument("--batches", default="1,16,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hf-dtype", default="bfloat16")
    ap.add_argument("--strata", default=".build/release/strata")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    runs = {name: {b: [] for b in batches} for name in ["strata", "llama.cpp", "transformers"]}
    for round_ in range(args.repeat):
        for b in batches:
            runs["strata"][b].append(strata(args, b))
        for b, r in llama_cpp(args, batches).items():
            runs["llama.cpp"][b].append(r)
        for b in batches:
            runs["transformers"][b].append(transformers(args, b))
        print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)

    model, flags = cpu_info()
    result = {"workload": {"model": args.model, "prompt_len": args.prompt_len, "gen_len": args.gen_len, "threads": args.threads,
                           "repeat": args.repeat, "transformers_dtype": args.hf_dtype, "llama_args": args.llama_args, "cpu": model, "cpu_flags": flags,
                           "machine": platform.machine()}, "batches": {}}
    for b in batches:
        row = {}
        for name in runs:
            row[name] = {k: round(statistics.median(r[k] for r in runs[name][b]), 2) for k in ["prefill", "decode", "total"]}
        for peer in ["llama.cpp", "transformers"]:
            row[f"strata/{peer}"] = {k: round(row["strata"][k] / row[peer][k], 3) for k in ["prefill", "decode", "total"]}
        result["batches"][str(b)] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
