#!/usr/bin/env python3
"""A random-weight GGUF of a real model's shape (TinyLlama-1.1B by default), Q4_0 or Q8_0 layer
matrices quantized by gguf-py, F16 embedding, the llama3-bpe fixture tokenizer: for measuring
GGUF load time and throughput at sizes no fixture has.

    python3 benchmarks/make_gguf_shape.py --out /tmp/tinyllama-shape.Q4_0.gguf --type q4_0
"""
import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from make_gguf_fixtures import ROOT, llama_header, tokenizer_metadata  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--type", choices=["q4_0", "q4_1", "q8_0"], default="q4_0")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    args = ap.parse_args()
    qtype = {"q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q8_0": Q.Q8_0}[args.type]
    h, f, heads, kv = args.hidden, args.ffn, args.heads, args.kv_heads
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(args.out, "llama")
    llama_header(w, args.layers, 2048, h, f, heads, kv, theta=10000.0)
    vocab = tokenizer_metadata(w, os.path.join(ROOT, "fixtures", "tokenizers", "llama3-bpe"))
    w.add_tensor("token_embd.weight", (0.02 * rng.standard_normal((vocab, h))).astype(np.float16))
    hd = h // heads
    shapes = {"attn_q": (h, h), "attn_k": (kv * hd, h), "attn_v": (kv * hd, h), "attn_output": (h, h),
              "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f)}
    for i in range(args.layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(h, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(h, np.float32))
        for name, (r, c) in shapes.items():
            x = (0.02 * rng.standard_normal((r, c), dtype=np.float32))
            w.add_tensor(f"blk.{i}.{name}.weight", gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    w.add_tensor("output_norm.weight", np.ones(h, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
    main()
