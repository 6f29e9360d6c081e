#!/usr/bin/env python3
"""Echo logprobs of the fixture models from transformers: for each reference prompt, every
token's log_softmax under the model given the tokens before it (the first has none), and each
position's two most likely tokens. `strata serve` answers `echo: true, logprobs: N` with these
numbers; ServeTests compares them within 1e-4.

Usage: python3 scripts/make_echo_fixtures.py  (needs torch==2.13.0+cpu and transformers)
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "models")

for name in ["opt-tiny", "opt-postln-proj", "llama-gqa", "llama3-tied"]:
    directory = os.path.join(ROOT, name)
    reference = json.load(open(os.path.join(directory, "reference.json")))
    model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    out = {"prompt_ids": reference["prompt_ids"], "token_logprobs": [], "top2_ids": []}
    with torch.no_grad():
        for ids in reference["prompt_ids"]:
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
            out["token_logprobs"].append([None] + [logprobs[t - 1, ids[t]].item() for t in range(1, len(ids))])
            out["top2_ids"].append([None] + [logprobs[t - 1].topk(2).indices.tolist() for t in range(1, len(ids))])
    with open(os.path.join(directory, "echo_logprobs.json"), "w") as f:
        json.dump(out, f)
    print(name, "ok")
