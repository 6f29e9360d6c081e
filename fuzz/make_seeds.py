#!/usr/bin/env python3
"""Seed corpora for the fuzz harnesses, made from the repository's fixtures (stdlib only).

Seeds are kept small (a few KB) so libFuzzer's mutations stay fast: tokenizers are cut to their
first few hundred tokens, safetensors and GGUF files hold a handful of tiny tensors. Writes
fuzz/seeds/<Harness>/; the output is committed.

    python3 fuzz/make_seeds.py
"""
import glob
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
F = lambda *p: os.path.join(ROOT, "fixtures", *p)  # noqa: E731


def put(harness, name, data):
    d = os.path.join(SEEDS, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, offset, blob = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blob += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def small_tokenizer(path, keep=300):
    tok = json.load(open(path))
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < keep}
    merges = []
    for m in tok["model"].get("merges", []):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = merges
    tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] < keep] + tok.get("added_tokens", [])[-1:]
    return json.dumps(tok, ensure_ascii=False)


def gguf(kv, tensors):
    """kv: list of (key, type, value) with type in u32/f32/str/bool/arr_str/arr_f32/arr_i32;
    tensors: list of (name, ggml type id, dims in GGUF order, raw bytes)."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    ids = {"u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9}
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, typ, value in kv:
        out += s(key)
        if typ.startswith("arr_"):
            inner = typ[4:]
            out += struct.pack("<II", ids["arr"], ids[inner]) + struct.pack("<Q", len(value))
            for v in value:
                out += s(v) if inner == "str" else struct.pack("<f" if inner == "f32" else "<i", v)
        else:
            out += struct.pack("<I", ids[typ])
            out += {"u32": lambda v: struct.pack("<I", v), "f32": lambda v: struct.pack("<f", v),
                    "bool": lambda v: struct.pack("<?", v), "str": s}[typ](value)
    offset, blobs = 0, []
    for name, ggml, dims, raw in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ggml, offset)
        blobs.append(raw + b"\0" * (-len(raw) % 32))
        offset += len(blobs[-1])
    out += b"\0" * (-len(out) % 32)
    return out + b"".join(blobs)


def f32(n, scale=0.01):
    return struct.pack(f"<{n}f", *[scale * ((i * 37) % 11 - 5) for i in range(n)])


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    # safetensors: a few tiny tensors of each dtype, and one with metadata.
    put("FuzzSafeTensors", "mixed.safetensors", safetensors([
        ("a.weight", "F32", [2, 3], f32(6)), ("b.bias", "F16", [4], struct.pack("<4e", 1, -2, 0.5, 65504)),
        ("c", "BF16", [2, 2], struct.pack("<4H", 0x3F80, 0xBF80, 0x0000, 0x7F80)), ("d", "U8", [3], b"\1\2\3")]))
    put("FuzzSafeTensors", "meta.safetensors", safetensors([("x", "F32", [1], f32(1))], {"format": "pt"}))
    put("FuzzSafeTensors", "empty.safetensors", safetensors([]))
    # index: the fixture's own, and one naming the harness's shard.
    put("FuzzSafeTensorsIndex", "fixture.json", open(F("models", "opt-postln-proj", "model.safetensors.index.json")).read())
    put("FuzzSafeTensorsIndex", "shard.json", json.dumps({"metadata": {"total_size": 36}, "weight_map": {
        "a.weight": "model-00001-of-00001.safetensors", "b.bias": "model-00001-of-00001.safetensors"}}))
    # configs: every fixture's, and tokenizer configs with chat templates.
    for path in sorted(glob.glob(F("models", "*", "*config.json"))):
        put("FuzzConfigs", os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path), open(path).read())
    templates = json.load(open(F("chat_templates", "templates.json")))["templates"]
    for name, source in templates.items():
        put("FuzzConfigs", f"chat-{name}.json", json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"},
                                                           "chat_template": source, "add_bos_token": True}))
        put("FuzzChatTemplate", name + ".jinja", source)
    # tokenizers, cut small.
    for name in ["gpt2-bpe", "llama3-bpe", "metaspace-bpe", "sentencepiece-bpe"]:
        put("FuzzTokenizerJSON", name + ".json", small_tokenizer(F("tokenizers", name, "tokenizer.json")))
    vocab = json.load(open(F("tokenizers", "gpt2-files", "vocab.json")))
    vocab = {t: i for t, i in vocab.items() if i < 300}
    merges = [m for m in open(F("tokenizers", "gpt2-files", "merges.txt")).read().split("\n")
              if m and not m.startswith("#") and len(m.split(" ")) == 2 and all(p in vocab for p in m.split(" "))]
    put("FuzzTokenizerFiles", "gpt2.bin", json.dumps(vocab) + "\0#version: 0.2\n" + "\n".join(merges) + "\n")
    # text: the tokenizer test strings, one seed per (tokenizer, string).
    texts = [r["text"] for r in json.load(open(F("tokenizers", "gpt2-bpe", "reference_ids.json")))]
    for i, text in enumerate(texts):
        put("FuzzTokenizerText", f"{i:03d}", bytes([i % 6]) + text.encode())
    # job lines.
    lines = [l for l in open(os.path.join(ROOT, "examples", "questions.jsonl")).read().split("\n") if l.strip()]
    lines += ['{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "id": 7}',
              '{"prompt": "x", "max_new_tokens": 3, "meta": {"a": [1, 2.5, null, true]}}']
    for i, line in enumerate(lines):
        put("FuzzJobLine", f"{i:03d}.json", line)
    # policy + precision map.
    put("FuzzPolicy", "policy.bin", json.dumps({"gpu_batch_size": 4, "num_gpu_batches": 2, "percent": [20, 80, 0, 100, 100, 0],
                                                 "overlap": True, "compress_weight": True}) + "\0" +
        json.dumps({"format": "strata-precision-map", "group_size": 64, "bits": {"0": 4, "1": 8, "11": 16}}))
    put("FuzzPolicy", "list.bin", json.dumps({"percent": [100, 0, 100, 0, 100, 0]}) + "\0" + json.dumps({"bits": [2, 3, 4, 8, 16]}))
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "clusters", "*.yaml"))):
        put("FuzzClusterSpec", os.path.basename(path), open(path).read())
    # offload manifest over the harness's tensors/0.bin (4096 bytes of 0x3c; checksum as Strata's).
    h = 0x9E3779B97F4A7C15
    for _ in range(512):
        h = ((h ^ 0x3C3C3C3C3C3C3C3C) * 0xFF51AFD7ED558CCD) & (2**64 - 1)
        h ^= h >> 29
    put("FuzzOffloadManifest", "store.json", json.dumps({"format": "strata-offload-store", "version": 1, "tensors": [
        {"name": "w", "dtype": "F32", "shape": [32, 32], "file": "tensors/0.bin", "bytes": 4096, "checksum": format(h, "x")},
        {"name": "h", "dtype": "F16", "shape": [8], "file": "tensors/0.bin", "bytes": 16, "checksum": "0"}]}))
    # GGUF: a one-layer llama with a 12-token BPE vocabulary and tensors in F32, F16, Q8_0, Q4_0.
    tokens = ["<s>", "</s>", "a", "b", "c", "ab", "abc", "Ġ", "Ġa", "!", "Ċ", "<|eot|>"]
    hd, ff = 32, 64
    q8 = lambda rows, cols: (struct.pack("<e", 0.01) + bytes(range(32))) * (rows * cols // 32)  # noqa: E731
    q4 = lambda rows, cols: (struct.pack("<e", 0.02) + bytes(range(16))) * (rows * cols // 32)  # noqa: E731
    kv = [("general.architecture", "str", "llama"), ("general.alignment", "u32", 32),
          ("llama.block_count", "u32", 1), ("llama.context_length", "u32", 64), ("llama.embedding_length", "u32", hd),
          ("llama.feed_forward_length", "u32", ff), ("llama.attention.head_count", "u32", 2),
          ("llama.attention.head_count_kv", "u32", 1), ("llama.attention.layer_norm_rms_epsilon", "f32", 1e-5),
          ("llama.rope.freq_base", "f32", 10000.0), ("tokenizer.ggml.model", "str", "gpt2"), ("tokenizer.ggml.pre", "str", "llama-bpe"),
          ("tokenizer.ggml.tokens", "arr_str", tokens), ("tokenizer.ggml.token_type", "arr_i32", [3, 3] + [1] * 9 + [3]),
          ("tokenizer.ggml.merges", "arr_str", ["a b", "ab c", "Ġ a"]), ("tokenizer.ggml.bos_token_id", "u32", 0),
          ("tokenizer.ggml.eos_token_id", "u32", 1), ("tokenizer.ggml.add_bos_token", "bool", True),
          ("tokenizer.chat_template", "str", templates["zephyr"])]
    tensors = [("token_embd.weight", 1, [hd, len(tokens)], struct.pack(f"<{hd * len(tokens)}e", *[0.01] * (hd * len(tokens)))),
               ("output_norm.weight", 0, [hd], f32(hd, 1)), ("blk.0.attn_norm.weight", 0, [hd], f32(hd, 1)),
               ("blk.0.ffn_norm.weight", 0, [hd], f32(hd, 1)),
               ("blk.0.attn_q.weight", 8, [hd, hd], q8(hd, hd)), ("blk.0.attn_k.weight", 8, [hd, hd // 2], q8(hd // 2, hd)),
               ("blk.0.attn_v.weight", 8, [hd, hd // 2], q8(hd // 2, hd)), ("blk.0.attn_output.weight", 8, [hd, hd], q8(hd, hd)),
               ("blk.0.ffn_gate.weight", 2, [hd, ff], q4(ff, hd)), ("blk.0.ffn_up.weight", 2, [hd, ff], q4(ff, hd)),
               ("blk.0.ffn_down.weight", 2, [ff, hd], q4(hd, ff))]
    put("FuzzGGUF", "llama.gguf", gguf(kv, tensors))
    put("FuzzGGUF", "header-only.gguf", gguf(kv[:3], []))


if __name__ == "__main__":
    main()
