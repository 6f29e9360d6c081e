#!/usr/bin/env python3
"""Perplexity of a model directory on a text file with transformers, by the same protocol as
`strata perplexity` (tokenize once, non-overlapping windows of --window tokens, a shorter
tail dropped unless there is no full window; exp of total NLL over tokens predicted).
Writes {"perplexity", "tokens", "windows", "window", "text"} as JSON to --output, which the
tests compare Strata against (f32 compute from the stored weights).

    python3 scripts/reference_perplexity.py --model fixtures/models/opt-licenses \
        --text fixtures/text/heldout.txt --window 512 --output fixtures/models/opt-licenses/perplexity_reference.json
"""
import argparse
import json
import math
import os

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def perplexity(model, ids, window):
    """(perplexity, tokens predicted, windows) of `ids` by the protocol above."""
    windows = [ids] if len(ids) < window else [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)]
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            x = torch.tensor([w])
            logits = model(input_ids=x).logits[0, :-1].double()
            nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += len(w) - 1
    return math.exp(nll / count), count, len(windows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    with open(args.text, encoding="utf-8") as f:
        ids = tok.encode(f.read()).ids
    value, count, windows = perplexity(model, ids, args.window)
    result = {"perplexity": value, "tokens": count, "windows": windows, "window": args.window, "text": args.text}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
