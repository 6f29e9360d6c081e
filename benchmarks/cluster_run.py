#!/usr/bin/env python3
"""Measured vs predicted: `strata cluster run` over MPI on this machine's CPU ranks, against the
planner's simulation of the same plans (LLM-PQ, PipeEdge, Uniform, AdaBits).

The cluster spec describes the ranks as they are: each rank's device type is a `strata profile`
of this machine at the rank's thread count, and its layer and head latencies are measured by
`strata cluster calibrate` (LLM-PQ plans from profiled latencies too). Each method's plan is
then run with `mpirun -np STAGES strata cluster run --plan ...` (EOS ignored, so every row
makes gen_len tokens, as the simulator assumes) and its throughput set beside the prediction.
It goes in rounds (calibrate, plan, run every method), each prediction compared with the runs
right after its calibration; medians over rounds are reported.

    python3 benchmarks/cluster_run.py [--ranks 2] [--threads 1] [--batch 8] [--prompt-len 64] [--gen-len 16]

Prints one JSON object per method and a markdown table. Makes bench-models/opt-125m (random
weights, needs torch + transformers) when it is absent, like cpu_side_by_side.py.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_side_by_side import make_opt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout


def prompts(model, count, length, path):
    """`count` prompts of `length` tokens (BOS included) from one tokenizer pass over text."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    words = ("the pipeline carries hidden states from stage to stage while each device keeps the cache of its own "
             "layers and the planner chooses bits micro batches and the partition for the whole cluster ").split()
    lines = []
    for i in range(count):
        text = " ".join(words[(i + j) % len(words)] for j in range(length * 2))
        ids = tok(text, add_special_tokens=False)["input_ids"][: length - 1]
        lines.append(json.dumps({"prompt": tok.decode(ids)}))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=os.path.join(ROOT, ".build", "release", "strata"))
    ap.add_argument("--models", default=os.path.join(ROOT, "bench-models"))
    ap.add_argument("--out", default="/tmp/strata-cluster-bench")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--bits", default="16,8,4")
    ap.add_argument("--theta", type=float, default=1.0)
    ap.add_argument("--memory", default="4GiB",
                    help="memory each rank may use (the spec's devices[].memory): one size for all, or one per rank, e.g. 1.25GiB,1.15GiB")
    ap.add_argument("--link-bandwidth", default="2GB", help="rank-to-rank bandwidth the spec states (shared memory here)")
    ap.add_argument("--link-latency", type=float, default=5e-5)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of calibrate, plan, run")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model = os.path.join(args.models, "opt-125m")
    make_opt(model)   # random weights at OPT-125m's shape, made once

    profile = os.path.join(args.out, "cpu.json")
    if not os.path.exists(profile):
        run([args.strata, "profile", "--threads", str(args.threads), "--output", profile, "--offload-dir", "/tmp/strata-offload"])
    batch_sizes = sorted({b for b in (1, 2, 4, 8, 16, 32, args.batch) if b <= args.batch})
    memories = args.memory.split(",")
    if len(memories) == 1:
        devices = f"  - {{type: {profile}, count: {args.ranks}, memory: {memories[0]}}}\n"
    else:
        if len(memories) != args.ranks:
            sys.exit("--memory: give one size, or one per rank")
        devices = "".join(f"  - {{type: {profile}, count: 1, memory: {m}}}\n" for m in memories)
    inputs = os.path.join(args.out, "prompts.jsonl")
    prompts(model, args.batch, args.prompt_len, inputs)

    # Rounds of calibrate -> plan -> run every method: this machine's speed drifts from minute
    # to minute (other tenants), so each prediction is compared with runs made right after the
    # calibration it came from, and the medians over rounds are reported.
    methods = ["llm-pq", "pipeedge", "uniform", "adabits"]
    rounds = {m: [] for m in methods}
    for r in range(args.repeat):
        # Every rank calibrates at once, as the ranks of a running pipeline compute at once
        # (they share the machine's memory bandwidth and caches); their samples are merged.
        calibration = os.path.join(args.out, f"calibration-{r}.json")
        probes = [subprocess.Popen([args.strata, "cluster", "calibrate", "--model", model, "--device", profile, "--threads",
                                    str(args.threads), "--bits", args.bits, "--batch-sizes", ",".join(map(str, batch_sizes)),
                                    "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--backend", "cpu",
                                    "--quiet", "--output", f"{calibration}.{k}"])
                  for k in range(args.ranks)]
        if any(p.wait() != 0 for p in probes):
            sys.exit("cluster calibrate failed")
        samples = []
        for k in range(args.ranks):
            with open(f"{calibration}.{k}") as f:
                samples += json.load(f)["samples"]
        with open(calibration, "w") as f:
            json.dump({"device": profile, "samples": samples}, f)
        spec = os.path.join(args.out, f"spec-{r}.yaml")
        with open(spec, "w") as f:
            f.write(f"""model: {model}
workload: {{global_batch: {args.batch}, prompt_len: {args.prompt_len}, gen_len: {args.gen_len}}}
devices:
{devices}links: {{bandwidth: {args.link_bandwidth}, latency: {args.link_latency}}}
theta: {args.theta}
bits: [{args.bits}]
calibration: {calibration}
kernels: strata
kv_cache_dtype: f32
""")
        plan_path = os.path.join(args.out, f"plan-{r}.json")
        plan = json.loads(run([args.strata, "cluster", "plan", spec, "--json", "--timeline", os.path.join(args.out, f"planned-{r}.svg")]))
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        for method in methods:
            p = plan["methods"][method]
            if p.get("infeasible"):
                continue
            out = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(len(p["stages"])), args.strata, "cluster", "run",
                       "--plan", plan_path, "--method", method, "--model", model, "--input", inputs,
                       "--output", os.path.join(args.out, f"{method}.jsonl"), "--overwrite", "--threads", str(args.threads),
                       "--batch-size", str(args.batch), "--max-new-tokens", str(args.gen_len), "--ignore-eos", "--backend", "cpu",
                       "--quiet", "--json", "--timeline", os.path.join(args.out, f"{method}-{r}.svg")])
            measured = json.loads(out.strip().splitlines()[-1])
            kp, kd = -(-args.batch // p["eta"]), -(-args.batch // p["xi"])
            rounds[method].append({
                "plan": (tuple(tuple(s["layers"]) for s in p["stages"]), tuple(sorted({b for s in p["stages"] for b in s["bits"]})),
                         p["eta"], p["xi"]),
                "predicted": p["throughput_tokens_per_s"], "measured": measured["tokens_per_s"],
                "busy": measured["stage_busy_seconds"],
                # What each stage computes in all, by the plan: every prefill micro-batch once, every
                # decode micro-batch for gen_len - 1 rounds (the first token comes from the prefill).
                "predicted_busy": [kp * s["prefill_seconds_per_micro_batch"] + (args.gen_len - 1) * kd * s["decode_seconds_per_micro_batch"]
                                   for s in p["stages"]],
            })
    rows = []
    for method in methods:
        runs = rounds[method]
        if not runs:
            continue
        plans = [r["plan"] for r in runs]
        common = max(set(plans), key=plans.count)
        middle = sorted(runs, key=lambda r: r["predicted"] / r["measured"])[len(runs) // 2]
        row = {
            "method": method, "plan_rounds": f"{plans.count(common)}/{len(runs)}",
            "layers": [list(l) for l in common[0]], "bits": list(common[1]), "eta": common[2], "xi": common[3],
            "predicted_tokens_per_s": statistics.median(r["predicted"] for r in runs),
            "measured_tokens_per_s": statistics.median(r["measured"] for r in runs),
            "ratio_median": statistics.median(r["predicted"] / r["measured"] for r in runs),
            "ratios": [r["predicted"] / r["measured"] for r in runs],
            "stage_busy_seconds": middle["busy"], "predicted_stage_busy_seconds": middle["predicted_busy"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| method | stages (layers) | bits | eta / xi | predicted tok/s | measured tok/s | predicted / measured (median of %d rounds; range) | "
          "stage busy s, measured / predicted (median round) |" % args.repeat)
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        layers = ", ".join(f"{a}-{b - 1}" for a, b in r["layers"])
        print(f"| {r['method']} | {len(r['layers'])} ({layers}){'' if r['plan_rounds'].split('/')[0] == r['plan_rounds'].split('/')[1] else ' in ' + r['plan_rounds'] + ' rounds'} | "
              f"{'/'.join(map(str, r['bits']))} | {r['eta']} / {r['xi']} | {r['predicted_tokens_per_s']:.1f} | {r['measured_tokens_per_s']:.1f} | "
              f"{r['ratio_median']:.2f} ({min(r['ratios']):.2f}-{max(r['ratios']):.2f}) | "
              + ", ".join(f"{m:.2f} / {q:.2f}" for m, q in zip(r["stage_busy_seconds"], r["predicted_stage_busy_seconds"])) + " |")


if __name__ == "__main__":
    main()
