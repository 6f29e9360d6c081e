#!/usr/bin/env python3
"""Strata vs Hugging Face transformers on the same model, batch and thread count, side by side.

Runs `strata bench --json` and the same workload with transformers (torch CPU, f32 compute,
greedy, exactly gen_len new tokens), alternating runs so both see the same machine noise, and
prints medians and the Strata/transformers ratio as one JSON object per metric. Each run is its
own process, so neither system's idle threads (torch's OpenMP pool spins after work) or
memory are present while the other one is measured.

    python3 benchmarks/compare_transformers.py --model bench-models/opt-125m \
        --batch-size 16 --prompt-len 128 --gen-len 32 --threads 2 --repeat 3

A GGUF file works as --model for both (transformers loads it with gguf_file=, dequantized);
--hf-dtypes float32,bfloat16 measures transformers in each dtype (bf16 is its best on CPUs
with AVX512-BF16/AMX), each against the same Strata runs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def hf_run(model, tok_ids, gen_len):
    import torch
    attention = torch.ones_like(tok_ids)
    with torch.no_grad():
        start = time.perf_counter()
        # Last-position logits only, as generate() asks for them (and as Strata's prefill does).
        model(input_ids=tok_ids, attention_mask=attention, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(input_ids=tok_ids, attention_mask=attention, max_new_tokens=gen_len, min_new_tokens=gen_len,
                             do_sample=False, pad_token_id=1)
        wall = time.perf_counter() - start
    assert out.shape[1] - tok_ids.shape[1] == gen_len
    b, s = tok_ids.shape
    return {"prefill_tokens_per_s": b * s / prefill, "total_tokens_per_s": b * gen_len / wall, "wall_seconds": wall}


def hf_worker(args):
    """One transformers measurement in this process: load, warm up, run once, print JSON."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.hf_dtype)
    if args.model.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(args.model)),
                                                     gguf_file=os.path.basename(args.model), dtype=dtype).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    g = torch.Generator().manual_seed(42)
    ids = torch.randint(20, model.config.vocab_size, (args.batch_size, args.prompt_len), generator=g)
    hf_run(model, ids[:1, :8], 2)  # warm-up
    result = hf_run(model, ids, args.gen_len)
    result["torch"] = torch.__version__
    print(json.dumps(result))


def hf_subprocess(args, dtype):
    cmd = [sys.executable, __file__, "--hf-worker", "--model", args.model, "--batch-size", str(args.batch_size),
           "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--threads", str(args.threads), "--hf-dtype", dtype]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def cpu_info():
    """(model name, the matrix/vector flags that decide each system's best kernels)."""
    model, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile"]
    return model, [f for f in wanted if f in flags]


def strata_run(binary, args):
    cmd = [binary, "bench", "--model", args.model, "--batch-size", str(args.batch_size), "--prompt-len", str(args.prompt_len),
           "--gen-len", str(args.gen_len), "--threads", str(args.threads), "--weight-format", args.weight_format, "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--weight-format", default="as-stored")
    ap.add_argument("--strata", default=".build/release/strata")
    ap.add_argument("--hf-dtypes", default="float32", help="comma-separated torch dtypes for transformers")
    ap.add_argument("--hf-dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.hf_worker:
        return hf_worker(args)

    dtypes = args.hf_dtypes.split(",")
    hf, strata = {d: [] for d in dtypes}, []
    for _ in range(args.repeat):
        strata.append(strata_run(args.strata, args))
        for d in dtypes:
            hf[d].append(hf_subprocess(args, d))
    cpu = cpu_info()[0]
    result = {"workload": {"model": args.model, "batch_size": args.batch_size, "prompt_len": args.prompt_len,
                           "gen_len": args.gen_len, "threads": args.threads, "repeat": args.repeat,
                           "strata_weight_format": args.weight_format, "cpu": cpu,
                           "torch": hf[dtypes[0]][0]["torch"]}}
    for key in ["prefill_tokens_per_s", "total_tokens_per_s"]:
        s = statistics.median(r[key] for r in strata)
        result[key] = {"strata": round(s, 2)}
        for d in dtypes:
            h = statistics.median(r[key] for r in hf[d])
            suffix = "" if len(dtypes) == 1 else "_" + d
            result[key]["transformers" + suffix] = round(h, 2)
            result[key]["ratio" + suffix] = round(s / h, 3)
    result["strata_decode_tokens_per_s"] = round(statistics.median(r["decode_tokens_per_s"] for r in strata), 2)
    result["strata_peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in strata)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
