#!/usr/bin/env python3
"""Strata vs transformers (fp32 and bf16) vs llama.cpp on one CPU, in one invocation.

Two models, both random weights at real shapes, made here on first use (not committed):
  - OPT-125m-shaped (transformers and Strata; llama.cpp has no OPT),
  - a Llama-shaped 250M model (hidden 1024, 16 layers, 16 heads, ffn 2816, vocab 32000):
    all three, llama.cpp reading it through its own convert_hf_to_gguf.py (f16 and bf16), then
    its llama-quantize for Q4_0 and Q8_0.
Workload: batch 1, 16 and 32, prompt 128, gen 32, 2 threads (FlexGen's metric: total = new
tokens / (prefill + decode time)). Every measurement is its own process, and the systems
alternate within each repeat so they share the machine's noise. Medians and ratios are
printed as one JSON object per (model, batch), then a markdown table.

Strata runs as-stored f16 (its exact default; `strata-f16-kvf16` the same with an f16 KV cache,
llama.cpp's default cache type, opt-in; `strata-f16-bf16x3` with `--matmul-precision bf16x3`,
prefill matmuls as bf16 splits on AMX tiles, opt-in), `--weight-format bf16` (matmuls on AMX /
AVX512-BF16 where the CPU has them), `--weight-format int8` (W8A8 on AMX-INT8; opt-in), and
the very Q4_0 / Q8_0 GGUF files llama.cpp runs.
llama.cpp: llama-batched-bench (-npp 128 -ntg 32 -npl B), gen tok/s = B*32/(T_PP+T_TG).

    python3 benchmarks/cpu_side_by_side.py --llama-cpp /path/to/llama.cpp --repeat 3

--llama-cpp is a llama.cpp checkout built with cmake (build/bin/llama-batched-bench and
llama-quantize); without it the llama.cpp columns are left out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from compare_transformers import cpu_info  # noqa: E402

LLAMA_SHAPE = dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                   intermediate_size=2816, vocab_size=32000, max_position_embeddings=2048)


def make_opt(directory):
    if not os.path.exists(os.path.join(directory, "config.json")):
        import make_fixtures
        make_fixtures.bench_model(directory)


def make_llama(directory, llama_cpp):
    """A random Llama (f16 safetensors) with a SentencePiece tokenizer trained on the repo's
    text, so that llama.cpp's converter takes it as it takes Llama 2; then its GGUF files."""
    if not os.path.exists(os.path.join(directory, "config.json")):
        import shutil
        import sentencepiece as spm
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer
        os.makedirs(directory, exist_ok=True)
        prefix = os.path.join(directory, "spm")
        spm.SentencePieceTrainer.train(input=os.path.join(ROOT, "fixtures", "text", "calibration.txt"), model_prefix=prefix,
                                       vocab_size=2000, model_type="bpe", byte_fallback=True, minloglevel=2)
        # tokenizer.model for llama.cpp's converter; tokenizer.json (converted from it) for Strata.
        shutil.copy(prefix + ".model", os.path.join(directory, "tokenizer.model"))
        LlamaTokenizer.from_pretrained(directory).save_pretrained(directory)
        config = LlamaConfig(**LLAMA_SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.float16).save_pretrained(directory, safe_serialization=True)
    ggufs = {}
    if llama_cpp:
        # f16, and llama.cpp's own bf16 file: the same 16-bit type as Strata's --weight-format bf16.
        # Written under a temporary name and renamed, so an interrupted run leaves no partial file.
        for kind in ["f16", "bf16"]:
            path = os.path.join(directory, f"model-{kind}.gguf")
            if not os.path.exists(path):
                subprocess.run([sys.executable, os.path.join(llama_cpp, "convert_hf_to_gguf.py"), directory, "--outtype", kind,
                                "--outfile", path + ".part"], check=True, capture_output=True)
                os.replace(path + ".part", path)
            ggufs[kind] = path
        f16 = ggufs["f16"]
        for kind in ["Q4_0", "Q8_0"]:
            path = os.path.join(directory, f"model-{kind.lower()}.gguf")
            if not os.path.exists(path):
                subprocess.run([os.path.join(llama_cpp, "build", "bin", "llama-quantize"), f16, path + ".part", kind], check=True,
                               capture_output=True)
                os.replace(path + ".part", path)
            ggufs[kind] = path
    return ggufs


def strata(args, model, batch, weight_format=None, extra=()):
    cmd = [args.strata, "bench", "--model", model, "--batch-size", str(batch), "--prompt-len", str(args.prompt_len),
           "--gen-len", str(args.gen_len), "--threads", str(args.threads), "--json", *extra]
    if weight_format:
        cmd += ["--weight-format", weight_format]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {"prefill": r["prefill_tokens_per_s"], "decode": r["decode_tokens_per_s"], "total": r["total_tokens_per_s"]}


def transformers(args, model, batch, dtype):
    cmd = [sys.executable, os.path.join(HERE, "compare_transformers.py"), "--hf-worker", "--model", model,
           "--batch-size", str(batch), "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len),
           "--threads", str(args.threads), "--hf-dtype", dtype]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    # compare_transformers times prefill and the whole generate() separately; decode is the rest.
    wall = r["wall_seconds"]
    prefill_s = batch * args.prompt_len / r["prefill_tokens_per_s"]
    decode_s = max(wall - prefill_s, 1e-9)
    return {"prefill": r["prefill_tokens_per_s"], "decode": batch * (args.gen_len - 1) / decode_s, "total": r["total_tokens_per_s"]}


def llama_cpp(args, gguf, batch):
    context = batch * (args.prompt_len + args.gen_len) + 16
    cmd = [os.path.join(args.llama_cpp, "build", "bin", "llama-batched-bench"), "-m", gguf, "-c", str(context), "-b", "2048",
           "-ub", "512", "-npp", str(args.prompt_len), "-ntg", str(args.gen_len), "-npl", str(batch), "-t", str(args.threads),
           "--output-format", "jsonl"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = [json.loads(line) for line in out.splitlines() if line.startswith("{")][-1]
    return {"prefill": r["speed_pp"], "decode": r["speed_tg"], "total": batch * args.gen_len / (r["t_pp"] + r["t_tg"])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", help="llama.cpp checkout with build/bin/llama-batched-bench and llama-quantize")
    ap.add_argument("--models", default=os.path.join(ROOT, "bench-models"), help="where the random models are made")
    ap.add_argument("--batches", default="1,16,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=["opt", "llama"], help="one of the two models")
    ap.add_argument("--strata", default=os.path.join(ROOT, ".build", "release", "strata"))
    ap.add_argument("--systems", help="comma-separated subset of the columns to run (e.g. strata-q4_0,strata-q4_0-int8,llamacpp-q4_0)")
    args = ap.parse_args()

    cpu, flags = cpu_info()
    print(json.dumps({"cpu": cpu, "flags": flags, "threads": args.threads, "prompt_len": args.prompt_len,
                      "gen_len": args.gen_len, "repeat": args.repeat}), flush=True)
    opt_dir, llama_dir = os.path.join(args.models, "opt-125m"), os.path.join(args.models, "llama-250m")
    systems = {}
    if args.only != "llama":
        make_opt(opt_dir)
        systems["opt-125m"] = {
            "strata-f16": lambda b: strata(args, opt_dir, b, "as-stored"),
            "strata-f16-kvf16": lambda b: strata(args, opt_dir, b, "as-stored", ["--cache-format", "f16"]),
            # f16 weights as stored, prefill products as bf16x3 splits on AMX tiles (opt-in).
            "strata-f16-bf16x3": lambda b: strata(args, opt_dir, b, "as-stored", ["--matmul-precision", "bf16x3"]),
            "strata-f16-bf16x3-kvf16": lambda b: strata(args, opt_dir, b, "as-stored", ["--matmul-precision", "bf16x3", "--cache-format", "f16"]),
            "strata-bf16": lambda b: strata(args, opt_dir, b, "bf16"),
            "strata-int8": lambda b: strata(args, opt_dir, b, "int8"),
            "hf-fp32": lambda b: transformers(args, opt_dir, b, "float32"),
            "hf-bf16": lambda b: transformers(args, opt_dir, b, "bfloat16"),
        }
    if args.only != "opt":
        ggufs = make_llama(llama_dir, args.llama_cpp)
        llama = {
            "strata-f16": lambda b: strata(args, llama_dir, b, "as-stored"),
            "strata-f16-kvf16": lambda b: strata(args, llama_dir, b, "as-stored", ["--cache-format", "f16"]),
            # f16 weights as stored, prefill products as bf16x3 splits on AMX tiles (opt-in).
            "strata-f16-bf16x3": lambda b: strata(args, llama_dir, b, "as-stored", ["--matmul-precision", "bf16x3"]),
            "strata-f16-bf16x3-kvf16": lambda b: strata(args, llama_dir, b, "as-stored", ["--matmul-precision", "bf16x3", "--cache-format", "f16"]),
            "strata-bf16": lambda b: strata(args, llama_dir, b, "bf16"),
            "strata-int8": lambda b: strata(args, llama_dir, b, "int8"),
            "hf-fp32": lambda b: transformers(args, llama_dir, b, "float32"),
            "hf-bf16": lambda b: transformers(args, llama_dir, b, "bfloat16"),
        }
        for kind, path in ggufs.items():
            llama["llamacpp-" + kind.lower()] = (lambda p: lambda b: llama_cpp(args, p, b))(path)
            if kind not in ("f16", "bf16"):
                llama["strata-" + kind.lower()] = (lambda p: lambda b: strata(args, p, b, "bf16"))(path)
                # The same file with int8 activations on the CPU's integer dot products (opt-in).
                llama["strata-" + kind.lower() + "-int8"] = (lambda p: lambda b: strata(args, p, b, "bf16", ["--int8-activations"]))(path)
        systems["llama-250m"] = llama
    if args.systems:
        keep = set(args.systems.split(","))
        systems = {m: {n: r for n, r in runners.items() if n in keep} for m, runners in systems.items()}
        systems = {m: r for m, r in systems.items() if r}

    rows = []
    for model, runners in systems.items():
        for batch in [int(b) for b in args.batches.split(",")]:
            runs = {name: [] for name in runners}
            for _ in range(args.repeat):
                for name, run in runners.items():
                    runs[name].append(run(batch))
            med = {name: {k: round(statistics.median(r[k] for r in rs), 1) for k in ["prefill", "decode", "total"]}
                   for name, rs in runs.items()}
            ratios = {}
            sixteen = [n for n in med if n in ("strata-f16", "strata-bf16")]
            hf = [n for n in med if n.startswith("hf-")]
            if hf:
                best_hf = max(hf, key=lambda n: med[n]["total"])
                if sixteen:
                    best_strata = max(sixteen, key=lambda n: med[n]["total"])
                    ratios[f"{best_strata}/{best_hf}"] = round(med[best_strata]["total"] / med[best_hf]["total"], 2)
                # int8 weights and activations (opt-in, W8A8) against transformers' best dtype
                # among those run (bf16 wherever the CPU has bf16 units).
                if "strata-int8" in med:
                    ratios[f"strata-int8/{best_hf}"] = round(med["strata-int8"]["total"] / med[best_hf]["total"], 2)
            for strata_name, peer in [("strata-bf16", "llamacpp-bf16"), ("strata-int8", "llamacpp-q8_0"),
                                      ("strata-bf16", "llamacpp-f16"), ("strata-f16", "llamacpp-f16"),
                                      ("strata-f16-kvf16", "llamacpp-f16"), ("strata-f16-bf16x3", "llamacpp-f16"),
                                      ("strata-f16-bf16x3-kvf16", "llamacpp-f16"),
                                      ("strata-q4_0", "llamacpp-q4_0"), ("strata-q8_0", "llamacpp-q8_0"),
                                      ("strata-q4_0-int8", "llamacpp-q4_0"), ("strata-q8_0-int8", "llamacpp-q8_0")]:
                if strata_name in med and peer in med:
                    ratios[f"{strata_name}/{peer}"] = round(med[strata_name]["total"] / med[peer]["total"], 2)
                    ratios[f"{strata_name}/{peer} decode"] = round(med[strata_name]["decode"] / med[peer]["decode"], 2)
            row = {"model": model, "batch": batch, "tokens_per_s": med, "total_ratios": ratios}
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n{cpu}, {args.threads} threads, prompt {args.prompt_len}, gen {args.gen_len}, median of {args.repeat}; "
          "tokens/s as prefill / decode / total\n")
    for row in rows:
        print(f"| {row['model']} | batch {row['batch']} | " + " | ".join(
            f"{n}: {v['prefill']:.0f} / {v['decode']:.0f} / **{v['total']:.1f}**" for n, v in row["tokens_per_s"].items()) + " |")
        print("|  | ratios | " + ", ".join(f"{k} {v}x" for k, v in row["total_ratios"].items()) + " |")


if __name__ == "__main__":
    sys.exit(main())
