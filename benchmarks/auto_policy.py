#!/usr/bin/env python3
"""`--policy auto` on this machine: for several budgets and workloads over an OPT-1.3B-shaped
store, `strata bench --policy auto --json` (the search's prediction and the measurement, median of
--repeat runs, in one process each) as a markdown table, with each tier's measured peak against
its budget.

    .build/release/strata convert --random opt-1.3b --out STORE
    python3 benchmarks/auto_policy.py --model STORE --offload-dir DIR [--repeat 3]

This VM's speed drifts by up to 1.5x from minute to minute (the same all-device run measured
5.3 and 7.9 tokens/s), more than the model's error. With --reference, each case is followed by an
all-device run of the same shape, predicted from the same profile, and the table adds the error
of the ratio case/reference: the drift common to both cancels.
"""
import argparse
import json
import os
import socket
import subprocess

# (label, batch, prompt, gen, extra flags)
CASES = [
    ("1 GiB device, 1 GiB host, disk", 8, 64, 8, ["--device-mem", "1GiB", "--host-mem", "1GiB", "--offload-dir", "{off}"]),
    ("2 GiB device, 1 GiB host, disk", 8, 64, 8, ["--device-mem", "2GiB", "--host-mem", "1GiB", "--offload-dir", "{off}"]),
    ("1 GiB device, 2 GiB host, no disk", 8, 64, 8, ["--device-mem", "1GiB", "--host-mem", "2GiB"]),
    ("6 GiB device, 1 GiB host", 8, 64, 8, ["--device-mem", "6GiB", "--host-mem", "1GiB"]),
    ("0.75 GiB device, 0.5 GiB host, disk", 16, 32, 8, ["--device-mem", "768MiB", "--host-mem", "512MiB", "--offload-dir", "{off}"]),
    ("1 GiB device, 0.5 GiB host, 4-bit allowed", 16, 64, 8,
     ["--device-mem", "1GiB", "--host-mem", "512MiB", "--compress-weight", "--compress-cache"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--offload-dir", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--reference", action="store_true",
                    help="also run an all-device reference of the same shape after each case and report the error of the ratio")
    ap.add_argument("--fresh-profile", action="store_true",
                    help="re-measure the cached profile (strata profile) before each case, so a drifting machine's prediction "
                         "and measurement are minutes apart")
    args = ap.parse_args()
    ref_head = " reference (all device) predicted / measured | error of the ratio |" if args.reference else ""
    print("| budgets | batch, prompt, gen | policy chosen | predicted tokens/s | measured tokens/s | error | prefill / decode error "
          "| device / host / disk peak (MiB) |" + ref_head)
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.reference else ""))
    ratio_errors = []
    errors = []
    for label, batch, prompt, gen, flags in CASES:
        flags = [f.replace("{off}", args.offload_dir) for f in flags]
        if args.fresh_profile:
            subprocess.run([args.strata, "profile", "--offload-dir", args.offload_dir, "--threads", str(args.threads)],
                           check=True, capture_output=True)
        cmd = [args.strata, "bench", "--model", args.model, "--batch-size", str(batch), "--prompt-len", str(prompt),
               "--gen-len", str(gen), "--threads", str(args.threads), "--repeat", str(args.repeat), "--policy", "auto",
               "--json", "--quiet"] + flags
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"| {label} | {batch}, {prompt}, {gen} | refused: {run.stderr.strip().splitlines()[-1]} | | | | | |", flush=True)
            continue
        r = json.loads(run.stdout)
        tiers = r["tiers"]
        p, m = r["predicted_tokens_per_s"], r["total_tokens_per_s"]
        errors.append(p / m - 1)
        peaks = " / ".join(f"{tiers[t]['peak_bytes'] / 2**20:.0f}" for t in ("device", "host", "disk"))
        flags_text = policy_flags(tiers["policy"])
        parts = (f"{100 * (r['predicted_prefill_tokens_per_s'] / r['prefill_tokens_per_s'] - 1):+.0f}% / "
                 f"{100 * (r['predicted_decode_tokens_per_s'] / r['decode_tokens_per_s'] - 1):+.0f}%")
        ref = ""
        if args.reference:
            rp, rm = reference(args, batch, prompt, gen, tiers["policy"]["gpu_batch_size"])
            ratio_errors.append((p / rp) / (m / rm) - 1)
            ref = f" {rp:.2f} / {rm:.2f} | {100 * ratio_errors[-1]:+.1f}% |"
        print(f"| {label} | {batch}, {prompt}, {gen} | `{flags_text}` | {p:.2f} | {m:.2f} | {100 * (p / m - 1):+.1f}% | {parts} | {peaks} |"
              + ref, flush=True)
    if errors:
        worst = max(errors, key=abs)
        print(f"\nworst error {100 * worst:+.1f}%, mean absolute {100 * sum(map(abs, errors)) / len(errors):.1f}%")
    if ratio_errors:
        worst = max(ratio_errors, key=abs)
        print(f"ratio to the all-device reference: worst error {100 * worst:+.1f}%, "
              f"mean absolute {100 * sum(map(abs, ratio_errors)) / len(ratio_errors):.1f}%")


def reference(args, batch, prompt, gen, gbs):
    """The all-device policy at the chosen gpu batch size: predicted (strata plan, same cached profile) and measured."""
    policy = ["--percent", "100", "0", "100", "0", "100", "0", "--gpu-batch-size", str(gbs), "--num-gpu-batches", str(batch // gbs)]
    plan = json.loads(subprocess.run([args.strata, "plan", "--model", args.model, "--hardware", cached_profile(),
                                      "--prompt-len", str(prompt), "--gen-len", str(gen), "--threads", str(args.threads), "--json"] + policy,
                                     check=True, capture_output=True, text=True).stdout)
    bench = json.loads(subprocess.run([args.strata, "bench", "--model", args.model, "--batch-size", str(batch), "--prompt-len", str(prompt),
                                       "--gen-len", str(gen), "--threads", str(args.threads), "--repeat", str(args.repeat), "--json",
                                       "--quiet"] + policy, check=True, capture_output=True, text=True).stdout)
    return plan["predicted_tokens_per_s"], bench["total_tokens_per_s"]


def cached_profile():
    """Where `strata profile` caches this machine's profile (the one --policy auto reads)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ.get("HOME", "/tmp"), ".cache")
    return os.path.join(base, "strata", f"profile-{socket.gethostname()}.json")


def policy_flags(p):
    s = "--percent " + " ".join(f"{v:g}" for v in p["percent"])
    s += f" --gpu-batch-size {p['gpu_batch_size']} --num-gpu-batches {p['num_gpu_batches']}"
    if p["cpu_attention"]:
        s += " --cpu-attention"
    if p["compress_weight"]:
        s += " --compress-weight"
    if p["compress_cache"]:
        s += " --compress-cache"
    return s


if __name__ == "__main__":
    main()
