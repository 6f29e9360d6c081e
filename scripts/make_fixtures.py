#!/usr/bin/env python3
"""Builds Strata's reference fixtures with torch + transformers + tokenizers.

Tiny random models (OPT pre-LN, OPT-350m-style post-LN with project_in/out, Llama with GQA,
Llama-3 style with rope_scaling and tied embeddings), byte-level BPE and SentencePiece-style
tokenizers trained here on the licence texts every Debian system ships, and reference outputs:
tokenizer ids for tricky strings, last-position logits of a left-padded batch, and greedy
generations (batched and one by one). Outputs go to fixtures/ and are committed; CI never
needs torch.

    python3 scripts/make_fixtures.py                  # regenerate fixtures/
    python3 scripts/make_fixtures.py --bench-model DIR  # also write an OPT-125m-shaped random f16 model (not committed)
"""
import argparse
import glob
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures")

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def corpus():
    texts = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    # A little multilingual text so merges exist beyond ASCII.
    texts.append("café naïve résumé Größe über señor año façade. 日本語のテキスト。中文文本。 Привет мир. ")
    return texts


def tricky_strings():
    s = [
        "Hello world", " Hello world", "Hello world ", "  two leading", "trailing two  ",
        "multiple   internal    spaces", "\n", "line one\nline two", "line\r\nwindows", "\n\n\nnewlines\n\n",
        "tabs\tand\t\ttabs", " \t mixed \n whitespace \t\n", "digits 1234567890 and 3.14159", "12 345 6789 0",
        "punctuation!!! ??? ... ;;; ---", "it's don't we're they've I'm you'll he'd", "IT'S DON'T WE'RE",
        "accents: café naïve résumé Größe", "combining: e\u0301 a\u0300 o\u0308", "CJK: 日本語のテキスト。中文文本",
        "emoji: 😀 🎉 👍🏽", "ZWJ: 👨‍👩‍👧‍👦 🏳️‍🌈", "mixed: abc123def!@#ghi", "email@example.com http://x.y/z?a=1&b=2",
        "C'est l'été, n'est-ce pas?", "ÀÉÎÕÜ àéîõü", "\u00a0non-breaking\u00a0space", "zero\u200bwidth",
        "    ", "a", "'s", "x = f(y) + g[z] * {w};", "Ünïcödé ẞ ß ǅ", "Привет, мир! Как дела?",
        "tab-end\t", "GNU General Public License, version 3", " the  the   the ",
    ]
    s.append(("The quick brown fox jumps over the lazy dog. 123 ümlaut 😀\n" * 90)[:5000])
    return s


def train_byte_level(texts, vocab_size, pattern, specials, bos, ignore_merges):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def train_sentencepiece(texts, vocab_size):
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, max_token_length=12)
    lines = [line for t in texts for line in t.split("\n") if line.strip()]
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def metaspace_variant(sp_tok):
    """The same vocabulary in the newer Llama layout: Metaspace pre-tokenizer and decoder."""
    data = json.loads(sp_tok.to_str())
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return Tokenizer.from_str(json.dumps(data))


def write_tokenizer_dir(directory, tok, config):
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def write_gpt2_files(directory, tok, config):
    """vocab.json + merges.txt, the layout OPT ships on the Hub."""
    os.makedirs(directory, exist_ok=True)
    data = json.loads(tok.to_str())
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(data["model"]["vocab"], f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in data["model"]["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def tokenizer_reference(directory, tok, strings):
    cases = []
    for s in strings:
        ids = tok.encode(s).ids
        cases.append({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    with open(os.path.join(directory, "reference_ids.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)


def randomize(model, scale):
    """Weights far from the default 0.02 init, so logits are confident and near-ties cannot hide bugs."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


PROMPTS = [
    "The GNU General Public License is a free",
    "You may",
    "This program is distributed in the hope that it will be useful, but",
    "Copyright (C) 2007 Free Software",
]


def model_reference(directory, model, tok, eos_id, pad_id, gen_tokens=24):
    model.eval()
    encoded = [tok.encode(p).ids for p in PROMPTS]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        kwargs = {"position_ids": position_ids} if model.config.model_type != "opt" else {}
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits[:, -1, :].float().contiguous()
        batched = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen_tokens, do_sample=False,
                                 pad_token_id=pad_id, eos_token_id=eos_id)
        single = [model.generate(input_ids=torch.tensor([e]), attention_mask=torch.ones(1, len(e), dtype=torch.long),
                                 max_new_tokens=gen_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id)
                  for e in encoded]

    def cut(seq):
        out = []
        for t in seq:
            out.append(int(t))
            if int(t) == eos_id:
                break
        return out

    top2 = logits.topk(2, dim=-1).values
    print(f"  {os.path.basename(directory)}: logit std {logits.std().item():.2f}, min top1-top2 gap {(top2[:, 0] - top2[:, 1]).min().item():.3f}")
    save_file({"last_logits": logits}, os.path.join(directory, "reference_logits.safetensors"))
    ref = {
        "prompts": PROMPTS,
        "prompt_ids": encoded,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "max_new_tokens": gen_tokens,
        "batched_greedy": [cut(batched[i, width:].tolist()) for i in range(len(PROMPTS))],
        "single_greedy": [cut(s[0, len(e):].tolist()) for s, e in zip(single, encoded)],
    }
    with open(os.path.join(directory, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


def save_model(model, directory, dtype, shard=None):
    # Non-persistent buffers (RoPE inv_freq) would be rounded by .to(dtype) too; a loader
    # recomputes them from config.json, so the reference must use the unrounded ones.
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    # The reference is computed in f32 from the weights as stored (rounded to dtype).
    model = model.float()
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return model


def build_opt(directory, tok_dir_writer, vocab, post_ln, dtype, shard=None):
    from transformers import OPTConfig, OPTForCausalLM
    cfg = OPTConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                    max_position_embeddings=128, do_layer_norm_before=not post_ln,
                    word_embed_proj_dim=32 if post_ln else 64, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    model = OPTForCausalLM._from_config(cfg, attn_implementation="eager")
    randomize(model, 0.25)
    os.makedirs(directory, exist_ok=True)
    model = save_model(model, directory, dtype, shard)
    tok_dir_writer(directory)
    return model


def build_llama(directory, tok_dir_writer, vocab, variant, dtype, bos, eos, pad):
    from transformers import LlamaConfig, LlamaForCausalLM
    if variant == "gqa":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos,
                          pad_token_id=pad, rms_norm_eps=1e-6)
    else:  # llama-3 style: tied embeddings, one KV head, llama3 rope scaling, explicit head_dim
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                          rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
                          pad_token_id=pad, rms_norm_eps=1e-5,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
    randomize(model, 0.25)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    os.makedirs(directory, exist_ok=True)
    model = save_model(model, directory, dtype)
    tok_dir_writer(directory)
    return model


def bench_model(directory):
    """OPT-125m-shaped random f16 checkpoint for benchmarks (not committed)."""
    from transformers import OPTConfig, OPTForCausalLM
    cfg = OPTConfig(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                    max_position_embeddings=2048, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    torch.manual_seed(0)
    model = OPTForCausalLM(cfg).to(torch.float16)
    model.save_pretrained(directory, safe_serialization=True)
    shutil.copy(os.path.join(OUT, "models", "opt-tiny", "tokenizer.json"), directory)
    shutil.copy(os.path.join(OUT, "models", "opt-tiny", "tokenizer_config.json"), directory)
    print(f"wrote {directory}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-model", help="also write an OPT-125m-shaped random f16 model here")
    args = ap.parse_args()
    texts = corpus()
    strings = tricky_strings()
    tokdir = os.path.join(OUT, "tokenizers")

    gpt2 = train_byte_level(texts, 1000, None, ["<s>", "<pad>", "</s>", "<unk>"], "</s>", False)
    gpt2_config = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True, "bos_token": "</s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 128}
    llama3 = train_byte_level(texts, 1000, LLAMA3_PATTERN, ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>", True)
    llama3_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                     "eos_token": "<|end_of_text|>", "model_max_length": 128}
    sp = train_sentencepiece(texts, 1000)
    sp_config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                 "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>", "model_max_length": 128}

    for name, tok, config in [("gpt2-bpe", gpt2, gpt2_config), ("llama3-bpe", llama3, llama3_config),
                              ("sentencepiece-bpe", sp, sp_config),
                              ("metaspace-bpe", metaspace_variant(sp), sp_config)]:
        d = os.path.join(tokdir, name)
        write_tokenizer_dir(d, tok, config)
        tokenizer_reference(d, tok, strings)
    gpt2_files = os.path.join(tokdir, "gpt2-files")
    write_gpt2_files(gpt2_files, gpt2, gpt2_config)
    tokenizer_reference(gpt2_files, gpt2, strings)
    print("tokenizers written")

    mdir = os.path.join(OUT, "models")
    opt_vocab = gpt2.get_vocab_size()
    d = os.path.join(mdir, "opt-tiny")
    m = build_opt(d, lambda x: write_tokenizer_dir(x, gpt2, gpt2_config), opt_vocab, post_ln=False, dtype=torch.float32)
    model_reference(d, m, gpt2, eos_id=2, pad_id=1)

    d = os.path.join(mdir, "opt-postln-proj")
    m = build_opt(d, lambda x: write_gpt2_files(x, gpt2, gpt2_config), opt_vocab, post_ln=True, dtype=torch.float16, shard="60KB")
    model_reference(d, m, gpt2, eos_id=2, pad_id=1)

    d = os.path.join(mdir, "llama-gqa")
    m = build_llama(d, lambda x: write_tokenizer_dir(x, sp, sp_config), sp.get_vocab_size(), "gqa", torch.bfloat16, 1, 2, 0)
    model_reference(d, m, sp, eos_id=2, pad_id=0)

    d = os.path.join(mdir, "llama3-tied")
    l3_vocab = llama3.get_vocab_size()
    bos, eos = llama3.token_to_id("<|begin_of_text|>"), llama3.token_to_id("<|end_of_text|>")
    m = build_llama(d, lambda x: write_tokenizer_dir(x, llama3, llama3_config), l3_vocab, "llama3", torch.float32, bos, eos, eos)
    model_reference(d, m, llama3, eos_id=eos, pad_id=eos)
    print("models written")

    if args.bench_model:
        bench_model(args.bench_model)


if __name__ == "__main__":
    main()
