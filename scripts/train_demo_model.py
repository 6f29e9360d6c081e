#!/usr/bin/env python3
"""Trains Strata's bundled demo model: a small OPT-architecture model (about 4M parameters)
with its own byte-level BPE tokenizer, on English text every Debian system ships (the licence
texts and package READMEs/copyright files under /usr/share). CPU only, about 15 minutes on
two cores. The model becomes fixtures/models/opt-licenses (f16, committed) and is the model
on which compression accuracy is measured.

Also writes fixtures/text/heldout.txt (documents never trained on: perplexity) and
fixtures/text/calibration.txt (training documents: the quality indicator's calibration set).

    python3 scripts/train_demo_model.py [--steps 1500]
"""
import argparse
import glob
import gzip
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import OUT, train_byte_level, write_tokenizer_dir  # noqa: E402


def documents():
    """Licence texts, then package READMEs and copyright files, in a fixed order."""
    paths = sorted(p for p in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(p))
    paths += sorted(glob.glob("/usr/share/doc/*/README*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    docs, seen = [], set()
    for path in paths:
        try:
            raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
        except OSError:
            continue
        text = raw.decode("utf-8", errors="replace")
        if len(text) < 200 or text in seen:
            continue
        seen.add(text)
        docs.append(text)
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--max-chars", type=int, default=6_000_000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)

    docs = documents()
    heldout = docs[7::20]
    train = [d for i, d in enumerate(docs) if i % 20 != 7]
    budget, kept = 0, []
    for d in train:
        if budget + len(d) > args.max_chars:
            break
        kept.append(d)
        budget += len(d)
    train = kept
    print(f"{len(train)} training documents ({budget} chars), {len(heldout)} held out", flush=True)

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = train_byte_level(train, 4096, None, specials, "</s>", False)
    tok_config = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True, "bos_token": "</s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512}

    os.makedirs(os.path.join(OUT, "text"), exist_ok=True)
    with open(os.path.join(OUT, "text", "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(heldout)[:80_000])
    with open(os.path.join(OUT, "text", "calibration.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(train[::10])[:40_000])

    ids = []
    for d in train:
        ids.extend(tok.encode(d).ids[1:] + [2])  # documents separated by </s>
    data = torch.tensor(ids, dtype=torch.long)
    print(f"{len(ids)} training tokens", flush=True)

    from transformers import OPTConfig, OPTForCausalLM
    cfg = OPTConfig(vocab_size=tok.get_vocab_size(), hidden_size=256, num_hidden_layers=4, ffn_dim=1024,
                    num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=256,
                    pad_token_id=1, bos_token_id=2, eos_token_id=2, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0)
    model = OPTForCausalLM(cfg)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    batch, seq = 16, 256
    start = time.time()
    model.train()
    for step in range(args.steps):
        lr = 2e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        offsets = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[o:o + seq] for o in offsets])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} lr {lr:.2e} {time.time() - start:.0f}s", flush=True)

    model.eval()
    directory = os.path.join(OUT, "models", "opt-licenses")
    os.makedirs(directory, exist_ok=True)
    model.to(torch.float16).save_pretrained(directory, safe_serialization=True)
    write_tokenizer_dir(directory, tok, tok_config)
    with torch.no_grad():
        prompt = torch.tensor([tok.encode("This program is free software").ids])
        out = model.float().generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=1)
    print("sample:", tok.decode(out[0].tolist()), flush=True)


if __name__ == "__main__":
    main()
