#!/usr/bin/env python3
"""Cost-model predictions vs measurements on this machine: for several policies over an
OPT-1.3B-shaped random store, `strata plan --percent ...` (the prediction, from this machine's
`strata profile`) beside `strata bench` (the measurement, median of --repeat runs), as a
markdown table.

    .build/release/strata convert --random opt-1.3b --out STORE
    .build/release/strata profile --offload-dir DIR --output profile.json
    python3 benchmarks/reality.py --model STORE --profile profile.json --offload-dir DIR
"""
import argparse
import json
import subprocess

POLICIES = [
    ("all on device", ["--percent", "100", "0", "100", "0", "100", "0"]),
    ("weights on host", ["--percent", "0", "100", "100", "0", "100", "0"]),
    ("weights on disk", ["--percent", "0", "0", "100", "0", "100", "0"]),
    ("weights 50/50 device/host, cache on host, host attention", ["--percent", "50", "50", "0", "100", "100", "0", "--cpu-attention"]),
    ("4-bit weights and cache on device", ["--percent", "100", "0", "100", "0", "100", "0", "--compress-weight", "--compress-cache"]),
    ("three tiers: weights 30/30/40, cache 50/50/0, activations 50/50/0",
     ["--percent", "30", "30", "50", "50", "50", "50"]),
    ("weights on disk, no overlap", ["--percent", "0", "0", "100", "0", "100", "0", "--overlap", "false"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--offload-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--strata", default=".build/release/strata")
    args = ap.parse_args()
    shape = ["--gpu-batch-size", str(args.batch_size), "--num-gpu-batches", "1"]
    print("| policy | predicted tokens/s | measured tokens/s | error | predicted bottleneck (decode) |")
    print("|---|---|---|---|---|")
    for name, flags in POLICIES:
        plan_flags = [f for f in flags if f not in ("--overlap", "false")]
        plan_cmd = [args.strata, "plan", "--model", args.model, "--hardware", args.profile, "--prompt-len", str(args.prompt_len),
                    "--gen-len", str(args.gen_len), "--json"] + shape + plan_flags
        if "--overlap" in flags:
            plan_cmd.append("--no-overlap")
        plan = json.loads(subprocess.run(plan_cmd, check=True, capture_output=True, text=True).stdout)
        bench = json.loads(subprocess.run([args.strata, "bench", "--model", args.model, "--batch-size", str(args.batch_size),
                                           "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len),
                                           "--offload-dir", args.offload_dir, "--repeat", str(args.repeat), "--json"] + shape + flags,
                                          check=True, capture_output=True, text=True).stdout)
        p, m = plan["predicted_tokens_per_s"], bench["total_tokens_per_s"]
        print(f"| {name} | {p:.2f} | {m:.2f} | {100 * (p / m - 1):+.1f}% | {plan['bottleneck']['decode']} |", flush=True)


if __name__ == "__main__":
    main()
