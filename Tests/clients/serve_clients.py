#!/usr/bin/env python3
"""`strata serve` and `strata run-batch` against real clients: the openai package,
lm-evaluation-harness (local-completions, remote tokenizer, local task files), plain HTTP for
error statuses, 64 concurrent clients with the server's resident memory measured, and a batch
job killed with SIGKILL and resumed. Every check asserts; the script exits non-zero on the
first failure. Loopback only.

Usage: python3 Tests/clients/serve_clients.py STRATA_BINARY
"""
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.path.abspath(sys.argv[1])
MODEL = os.path.join(ROOT, "fixtures", "models", "opt-licenses")
WORK = tempfile.mkdtemp(prefix="strata-serve-test-")
PROMPTS = [
    "The license", "Permission is hereby granted", "THE SOFTWARE IS PROVIDED", "Redistribution and use",
    "This program is free software", "You may obtain a copy", "Licensed under the Apache", "Copyright (c)",
    "All rights reserved", "without warranty", "the GNU General", "subject to the following conditions",
    "in source and binary forms", "WITHOUT WARRANTIES OR CONDITIONS", "the Software without restriction", "you can redistribute it",
]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


class Server:
    """`strata serve` on a free loopback port, stopped with SIGINT."""

    def __init__(self, model, *extra):
        self.process = subprocess.Popen([BINARY, "serve", "--model", model, "--port", "0", "--quiet", *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        check(line.startswith("listening on "), f"serve did not start: {line!r} {self.process.stderr.read() if not line else ''}")
        self.base = "http://" + line.split()[-1]

    def rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

    def stop(self):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("serve did not stop within 20 s of SIGINT")


def http(base, path, body=None, raw=None):
    """(status, parsed JSON body) of a GET (no body) or POST."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if r.headers.get("Content-Type", "").startswith("application/json") else text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def generate_alone(prompts, max_tokens):
    """`strata generate` one prompt per batch: what each prompt gets alone."""
    path = os.path.join(WORK, "generate-in.jsonl")
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, "id": i}) + "\n")
    out = os.path.join(WORK, "generate-out.jsonl")
    subprocess.run([BINARY, "generate", "--model", MODEL, "--input", path, "--output", out, "--overwrite", "--batch-size", "1",
                    "--max-new-tokens", str(max_tokens), "--quiet"], check=True, capture_output=True)
    rows = sorted((json.loads(l) for l in open(out)), key=lambda r: r["id"])
    return [r["token_ids"] for r in rows], [r["text"] for r in rows]


def test_refusals():
    """A KV cache that cannot fit in memory is refused at start, naming the options."""
    run = subprocess.run([BINARY, "serve", "--model", MODEL, "--port", "0", "--max-batch", "1000000", "--context", "256"],
                         capture_output=True, text=True, timeout=60)
    check(run.returncode != 0 and "--max-batch" in run.stderr and "MiB" in run.stderr, f"an impossible cache: {run.returncode} {run.stderr}")
    print("memory refusal at start: ok")


def test_openai_client(server, expected_texts):
    import openai
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    check(model == "opt-licenses", f"models: {model}")
    r = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=16, temperature=0)
    check(r.choices[0].text == expected_texts[0], f"completion {r.choices[0].text!r} != generate's {expected_texts[0]!r}")
    check(r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length", f"usage {r.usage}")
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=16,
                                                                           temperature=0, stream=True) if c.choices)
    check(streamed == expected_texts[0], f"streamed {streamed!r} != {expected_texts[0]!r}")
    batch = client.completions.create(model=model, prompt=PROMPTS[:4], max_tokens=16, temperature=0, logprobs=3)
    check([c.text for c in sorted(batch.choices, key=lambda c: c.index)] == expected_texts[:4], "a list of prompts")
    check(all(len(c.logprobs.token_logprobs) == 16 and len(c.logprobs.top_logprobs[0]) >= 3 for c in batch.choices), "logprobs")
    sampled = [client.completions.create(model=model, prompt=PROMPTS[1], max_tokens=12, temperature=0.8, top_p=0.9, seed=7).choices[0].text
               for _ in range(2)]
    check(sampled[0] == sampled[1], f"a seed must repeat: {sampled}")
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError:
        pass
    try:
        client.completions.create(model=model, prompt="x", max_tokens=100000)
        raise AssertionError("max_tokens over the context was accepted")
    except openai.BadRequestError as e:
        check("max_tokens" in str(e) and "context" in str(e), str(e))
    print("openai completions: ok")


def test_chat(expected_chat):
    """Chat through the Zephyr template (copied into a model directory of its own)."""
    import openai
    model_dir = os.path.join(WORK, "chat-model")
    shutil.copytree(MODEL, model_dir)
    templates = json.load(open(os.path.join(ROOT, "fixtures", "chat_templates", "templates.json")))["templates"]
    config_path = os.path.join(model_dir, "tokenizer_config.json")
    config = json.load(open(config_path))
    config["chat_template"] = templates["zephyr"]
    json.dump(config, open(config_path, "w"))
    server = Server(model_dir)
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a license."}]
        r = client.chat.completions.create(model="chat-model", messages=messages, max_tokens=12, temperature=0)
        text = r.choices[0].message.content
        check(r.choices[0].message.role == "assistant" and r.usage.completion_tokens > 0, f"chat {r}")
        chunks = list(client.chat.completions.create(model="chat-model", messages=messages, max_tokens=12, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check(streamed == text, f"streamed chat {streamed!r} != {text!r}")
        check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "stream usage")
        # The prompt the template renders is what /tokenize counts for the same messages.
        status, tokens = http(server.base, "/tokenize", {"messages": messages})
        check(status == 200 and tokens["count"] == r.usage.prompt_tokens, f"tokenize messages {tokens}")
        print("openai chat: ok")
    finally:
        server.stop()


def test_http_errors(server):
    status, body = http(server.base, "/v1/completions", raw=b'{"prompt": "x", ')
    check(status == 400 and "JSON" in body["error"]["message"], f"malformed JSON: {status} {body}")
    status, body = http(server.base, "/v1/completions", raw=b'{"prompt": "' + b"a" * 2_000_000 + b'"}')
    check(status == 413 and body["error"]["type"] == "RequestTooLargeError", f"oversized body: {status}")
    status, body = http(server.base, "/v1/completions", {"prompt": "x", "temperature": "hot"})
    check(status == 400 and body["error"]["param"] == "temperature", f"wrong type: {body}")
    status, body = http(server.base, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    check(status == 400 and body["error"]["param"] == "messages", f"no chat template: {body}")
    status, info = http(server.base, "/tokenizer_info")
    check(status == 200 and info["eos_token"] == "</s>", f"tokenizer_info {info}")
    status, tokens = http(server.base, "/tokenize", {"prompt": "The license", "add_special_tokens": False})
    status, text = http(server.base, "/detokenize", {"tokens": tokens["tokens"]})
    check(text["prompt"] == "The license", f"detokenize {text}")
    status, health = http(server.base, "/health")
    check(status == 200, "health")
    print("http errors and tokenizer routes: ok")


def test_concurrency(server, expected_texts):
    """Greedy outputs under concurrency, bad requests mixed in, equal each prompt's alone."""
    def ask(i):
        if i % 5 == 4:
            return None, http(server.base, "/v1/completions", {"prompt": "x", "top_p": 7})
        p = i % len(PROMPTS)
        return p, http(server.base, "/v1/completions", {"prompt": PROMPTS[p], "max_tokens": 16, "temperature": 0})
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(ask, range(40)))
    for p, (status, body) in results:
        if p is None:
            check(status == 400 and body["error"]["param"] == "top_p", f"bad request answered {status} {body}")
            continue
        check(status == 200, f"status {status} {body}")
        text = body["choices"][0]["text"]
        check(text == expected_texts[p], f"prompt {p}: {text!r} != generate's {expected_texts[p]!r}")
    print("greedy under concurrency equals generate: ok")


def test_load(server, seconds=20):
    """64 clients for a bounded time: every request answered, resident memory bounded."""
    before = server.rss_kib()
    stop_at = time.time() + seconds
    counts = {"ok": 0, "bad": 0}
    lock = threading.Lock()
    peak = [before]

    def client(k):
        while time.time() < stop_at:
            status, body = http(server.base, "/v1/completions",
                                {"prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": 8 + k % 9, "temperature": 0.7, "seed": k})
            with lock:
                counts["ok" if status == 200 and body["choices"][0]["finish_reason"] in ("length", "stop") else "bad"] += 1
            with lock:
                peak[0] = max(peak[0], server.rss_kib())
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        list(pool.map(client, range(64)))
    check(counts["bad"] == 0 and counts["ok"] >= 64, f"load: {counts}")
    status, metrics = http(server.base, "/metrics")
    for name in ["strata_queue_depth", "strata_running_batch_size", "strata_generation_tokens_total",
                 "strata_time_to_first_token_seconds_bucket", "strata_request_latency_seconds_count"]:
        check(name in metrics, f"/metrics lacks {name}")
    # Bounded: the KV cache is allocated at start; 64 clients add only their requests' state.
    check(peak[0] - before < 200 * 1024, f"resident memory grew by {(peak[0] - before) / 1024:.0f} MiB under load")
    print(f"64 clients x {seconds} s: {counts['ok']} requests answered, resident memory {before / 1024:.0f} MiB before, "
          f"peak {peak[0] / 1024:.0f} MiB")


def test_lm_eval(server):
    """lm-evaluation-harness against the server; its loglikelihoods equal `strata score`'s."""
    out = os.path.join(WORK, "lm_eval")
    tasks = os.path.join(ROOT, "Tests", "clients", "lm_eval_tasks")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
                          f"model=opt-licenses,base_url={server.base}/v1/completions,tokenizer_backend=remote,num_concurrent=8,max_retries=1",
                          "--tasks", "strata_licenses_mc,strata_licenses_gen", "--include_path", tasks,
                          "--output_path", out, "--log_samples"], capture_output=True, text=True, env=env, timeout=900, cwd=tasks)
    check(run.returncode == 0, f"lm_eval failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    table = [l for l in run.stdout.splitlines() if "strata_licenses" in l]
    print("lm_eval results:\n" + "\n".join(table))
    samples = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.startswith("samples_strata_licenses_mc")]
    check(samples, "lm_eval wrote no samples")
    pairs, scores = [], []
    for line in open(samples[0]):
        s = json.loads(line)
        arguments = s["arguments"]
        if isinstance(arguments, dict):
            arguments = [[a[f"arg_{j}"] for j in range(len(a))] for a in arguments.values()]
        for (context, continuation), response in zip(arguments, s["resps"]):
            pairs.append({"context": context, "continuation": continuation})
            scores.append(float(response[0][0]))
    path = os.path.join(WORK, "pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    mine = subprocess.run([BINARY, "score", "--model", MODEL, "--input", path, "--quiet"], check=True, capture_output=True, text=True)
    own = [json.loads(l)["loglikelihood"] for l in mine.stdout.splitlines()]
    check(len(own) == len(scores) > 0, f"{len(own)} scores for {len(scores)} pairs")
    worst = max(abs(a - b) for a, b in zip(own, scores))
    check(worst <= 1e-4 * max(1.0, max(abs(x) for x in own)), f"lm_eval's loglikelihoods differ from strata score by {worst}")
    print(f"lm_eval: {len(scores)} loglikelihoods equal strata score's within {worst:.2e}")


def test_run_batch(expected_texts):
    """A batch job killed with SIGKILL and rerun: every custom_id answered exactly once."""
    path, out = os.path.join(WORK, "batch-in.jsonl"), os.path.join(WORK, "batch-out.jsonl")
    with open(path, "w") as f:
        for i in range(48):
            p = PROMPTS[i % len(PROMPTS)]
            if i % 2:
                body = {"model": "opt-licenses", "prompt": p, "max_tokens": 16, "temperature": 0}
                f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
            else:
                body = {"model": "opt-licenses", "prompt": p, "max_tokens": 200, "temperature": 0, "ignore_eos": True}
                f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
        f.write(json.dumps({"custom_id": "bad", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "n": -1}}) + "\n")
    command = [BINARY, "run-batch", "-i", path, "-o", out, "--model", MODEL, "--max-batch", "4", "--quiet", "--in-flight", "4"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not os.path.exists(out) or sum(1 for _ in open(out)) < 6):
        time.sleep(0.05)
    job.kill()
    job.wait()
    partial = sum(1 for _ in open(out))
    check(0 < partial < 49, f"the kill came after {partial} lines")
    subprocess.run(command, check=True, capture_output=True)
    lines = [json.loads(l) for l in open(out)]
    ids = [l["custom_id"] for l in lines]
    check(sorted(ids) == sorted([f"r{i}" for i in range(48)] + ["bad"]), f"custom_ids after resume: {len(ids)} lines, {len(set(ids))} distinct")
    for l in lines:
        if l["custom_id"] == "bad":
            check(l["response"]["status_code"] == 400 and l["error"]["message"], f"bad line: {l}")
            continue
        i = int(l["custom_id"][1:])
        check(l["response"]["status_code"] == 200 and l["error"] is None, f"line {l}")
        if i % 2:
            text = l["response"]["body"]["choices"][0]["text"]
            check(text == expected_texts[i % len(PROMPTS)], f"{l['custom_id']}: {text!r}")
    print(f"run-batch: killed after {partial} of 49 lines, resumed to 49 distinct custom_ids: ok")


def test_policy(expected_texts):
    """Under an offloading policy (weights and cache split over device and host tiers, 4-bit
    weights off) requests run in the policy's blocks and give generate's tokens."""
    path, out = os.path.join(WORK, "policy-in.jsonl"), os.path.join(WORK, "policy-out.jsonl")
    with open(path, "w") as f:
        for i, p in enumerate(PROMPTS[:10]):
            body = {"prompt": p, "max_tokens": 16, "temperature": 0}
            f.write(json.dumps({"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
    subprocess.run([BINARY, "run-batch", "-i", path, "-o", out, "--model", MODEL, "--quiet", "--context", "128",
                    "--percent", "50", "50", "50", "50", "100", "0", "--gpu-batch-size", "2", "--num-gpu-batches", "2"],
                   check=True, capture_output=True)
    for l in map(json.loads, open(out)):
        i = int(l["custom_id"][1:])
        text = l["response"]["body"]["choices"][0]["text"]
        check(text == expected_texts[i], f"under the policy, {l['custom_id']}: {text!r} != {expected_texts[i]!r}")
    print("run-batch under an offloading policy equals generate: ok")


def main():
    expected_ids, expected_texts = generate_alone(PROMPTS, 16)
    test_refusals()
    server = Server(MODEL, "--max-batch", "16", "--context", "256", "--max-body-bytes", "1000000")
    try:
        test_openai_client(server, expected_texts)
        test_http_errors(server)
        test_concurrency(server, expected_texts)
        test_load(server)
        test_lm_eval(server)
    finally:
        server.stop()
    test_chat(expected_texts)
    test_run_batch(expected_texts)
    test_policy(expected_texts)
    shutil.rmtree(WORK, ignore_errors=True)
    print("all client checks passed")


if __name__ == "__main__":
    main()
