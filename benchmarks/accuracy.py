#!/usr/bin/env python3
"""Perplexity of the bundled trained model under each compression setting, one markdown table.

    python3 benchmarks/accuracy.py [--model fixtures/models/opt-licenses] [--average-bits 4.5]

Uses `strata perplexity` (GPTQ protocol, window 512) on fixtures/text/heldout.txt and
`strata indicator` on fixtures/text/calibration.txt for the mixed-precision map; the random
map has the same bits shuffled across layers (same size).
"""
import argparse
import json
import os
import subprocess
import tempfile


def strata(args, *cmd):
    out = subprocess.run([args.strata, *cmd], check=True, capture_output=True, text=True)
    return out.stdout, out.stderr


def ppl(args, *flags):
    out, _ = strata(args, "perplexity", "--model", args.model, "--text", args.text, "--window", str(args.window), "--json", *flags)
    return json.loads(out)


def uniform_map(directory, layers, bits):
    path = os.path.join(directory, f"uniform-{bits}.json")
    with open(path, "w") as f:
        json.dump({"format": "strata-precision-map", "group_size": 64, "bits": [bits] * layers}, f)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fixtures/models/opt-licenses")
    ap.add_argument("--text", default="fixtures/text/heldout.txt")
    ap.add_argument("--calibration", default="fixtures/text/calibration.txt")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--average-bits", type=float, default=3.5)
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strata", default=".build/release/strata")
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json")) as f:
        layers = json.load(f)["num_hidden_layers"]
    tmp = tempfile.mkdtemp()
    indicator_map, random_map = os.path.join(tmp, "indicator.json"), os.path.join(tmp, "random.json")
    _, err = strata(args, "indicator", "--model", args.model, "--text", args.calibration, "--output", os.path.join(tmp, "omega.json"),
                    "--average-bits", str(args.average_bits), "--bits", args.bits, "--precision-out", indicator_map,
                    "--random-out", random_map, "--seed", str(args.seed))
    def bits_of(path):
        with open(path) as f:
            b = json.load(f)["bits"]
        return " ".join(str(b[str(i)] if isinstance(b, dict) else b[i]) for i in range(layers))

    rows = [
        ("16-bit weights (stored f16, f32 compute)", []),
        ("8-bit g64 weights", ["--precision", uniform_map(tmp, layers, 8)]),
        ("4-bit g64 weights", ["--compress-weight"]),
        ("4-bit g64 weights + 4-bit cache", ["--compress-weight", "--compress-cache"]),
        ("3-bit g64 weights", ["--precision", uniform_map(tmp, layers, 3)]),
        (f"mixed, chosen by the indicator ({bits_of(indicator_map)})", ["--precision", indicator_map]),
        (f"mixed, random with the same bits ({bits_of(random_map)})", ["--precision", random_map]),
    ]
    results = [(name, ppl(args, *flags)) for name, flags in rows]
    base = results[0][1]["perplexity"]
    print(f"| setting | perplexity | vs 16-bit | tokens |")
    print("|---|---|---|---|")
    for name, r in results:
        print(f"| {name} | {r['perplexity']:.3f} | {100 * (r['perplexity'] / base - 1):+.2f}% | {r['tokens']} |")


if __name__ == "__main__":
    main()
