#!/usr/bin/env python3
"""Throughput of `strata serve` under many concurrent clients against `strata generate` on the
same prompts, side by side in one run.

Each round runs, in alternation, `strata generate --input` (batches of --batch prompts, the
offline path) and a fresh `strata serve --max-batch --batch` answering the same prompts sent by
--clients concurrent HTTP clients (each takes the next prompt when its last one is answered).
Both are greedy with the same --gen-len limit, so they generate the same tokens; throughput is
generated tokens / wall seconds (the server's from the first request sent to the last answer).
Prints one JSON object per round and a JSON summary with medians, the serve/generate ratio and
the clients' time-to-first-token and latency percentiles (streamed requests).

    python3 benchmarks/serve_throughput.py --prompts 128 --clients 64 --batch 16 --repeat 3
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_side_by_side import make_opt  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def make_prompts(path, count, length):
    words = ("the engine answers many clients at once and keeps its batches full while requests arrive and leave "
             "between decode steps so the model weights are read once for every sequence in the batch").split()
    with open(path, "w") as f:
        for i in range(count):
            n = length // 2 + (i * 7) % length   # varied lengths, as real traffic
            f.write(json.dumps({"prompt": " ".join(words[(i + j) % len(words)] for j in range(n)), "id": i}) + "\n")


def run_generate(args, model, prompts):
    out = os.path.join(args.out, "generate.jsonl")
    start = time.perf_counter()
    subprocess.run([args.strata, "generate", "--model", model, "--input", prompts, "--output", out, "--overwrite", "--quiet",
                    "--batch-size", str(args.batch), "--max-new-tokens", str(args.gen_len), "--threads", str(args.threads)],
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    rows = [json.loads(l) for l in open(out)]
    tokens = sum(len(r["token_ids"]) for r in rows)
    # Model loading is part of generate's wall time; take it out with a zero-work run's time.
    start = time.perf_counter()
    subprocess.run([args.strata, "generate", "--model", model, "--prompt", "a", "--max-new-tokens", "1", "--quiet",
                    "--threads", str(args.threads)], check=True, capture_output=True)
    load = time.perf_counter() - start
    return {"tokens": tokens, "seconds": wall - load, "texts": {r["id"]: r["text"] for r in rows}}


def post(base, body, stream=False):
    request = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as r:
        if not stream:
            return json.loads(r.read()), None, time.perf_counter() - start
        first, text, usage = None, "", None
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                # logprobs: 0 makes every token a chunk, text or not (a random model's tokens
                # often decode to nothing), so the first chunk marks the first token.
                if first is None:
                    first = time.perf_counter() - start
                text += c["text"]
        return {"choices": [{"text": text}], "usage": usage}, first, time.perf_counter() - start


def run_serve(args, model, prompts):
    server = subprocess.Popen([args.strata, "serve", "--model", model, "--port", "0", "--quiet", "--max-batch", str(args.batch),
                               "--context", str(args.context), "--threads", str(args.threads)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        base = "http://" + server.stdout.readline().split()[-1]
        items = [json.loads(l) for l in open(prompts)]
        lock = threading.Lock()
        queue = list(items)
        texts, tokens, ttft, latency = {}, [0], [], []
        rss = [0]

        def client(_):
            while True:
                with lock:
                    if not queue:
                        return
                    item = queue.pop(0)
                body = {"prompt": item["prompt"], "max_tokens": args.gen_len, "temperature": 0, "stream": True, "logprobs": 0,
                        "stream_options": {"include_usage": True}}
                response, first, seconds = post(base, body, stream=True)
                with lock:
                    texts[item["id"]] = response["choices"][0]["text"]
                    tokens[0] += response["usage"]["completion_tokens"]
                    ttft.append(first if first is not None else seconds)
                    latency.append(seconds)
                    with open(f"/proc/{server.pid}/status") as f:
                        rss[0] = max(rss[0], next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")))
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        seconds = time.perf_counter() - start
        ttft.sort()
        latency.sort()
        pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
        return {"tokens": tokens[0], "seconds": seconds, "texts": texts, "ttft_p50": pct(ttft, 0.5), "ttft_p95": pct(ttft, 0.95),
                "latency_p50": pct(latency, 0.5), "latency_p95": pct(latency, 0.95), "peak_rss_mib": rss[0] / 1024}
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strata", default=os.path.join(ROOT, ".build", "release", "strata"))
    ap.add_argument("--models", default=os.path.join(ROOT, "bench-models"))
    ap.add_argument("--out", default="/tmp/strata-serve-bench")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64, help="prompts run from half to 1.5x this many words")
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="generate's --batch-size and serve's --max-batch")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model = os.path.join(args.models, "opt-125m")
    make_opt(model)   # random weights at OPT-125m's shape, made once
    prompts = os.path.join(args.out, "prompts.jsonl")
    make_prompts(prompts, args.prompts, args.prompt_len)
    rounds = []
    for r in range(args.repeat):
        g = run_generate(args, model, prompts)
        s = run_serve(args, model, prompts)
        same = sum(g["texts"][i] == s["texts"].get(i) for i in g["texts"])
        row = {"round": r, "generate_tokens_per_s": g["tokens"] / g["seconds"], "serve_tokens_per_s": s["tokens"] / s["seconds"],
               "generate_tokens": g["tokens"], "serve_tokens": s["tokens"], "identical_texts": same, "prompts": len(g["texts"]),
               **{k: s[k] for k in ("ttft_p50", "ttft_p95", "latency_p50", "latency_p95", "peak_rss_mib")}}
        row["ratio"] = row["serve_tokens_per_s"] / row["generate_tokens_per_s"]
        rounds.append(row)
        print(json.dumps(row), flush=True)
    median = lambda k: statistics.median(r[k] for r in rounds)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(json.dumps({"summary": True, "cpu": cpu, "prompts": args.prompts, "clients": args.clients, "batch": args.batch,
                      "gen_len": args.gen_len, "threads": args.threads,
                      **{k: median(k) for k in ("generate_tokens_per_s", "serve_tokens_per_s", "ratio", "ttft_p50", "ttft_p95",
                                                "latency_p50", "latency_p95", "peak_rss_mib")}}))


if __name__ == "__main__":
    main()
