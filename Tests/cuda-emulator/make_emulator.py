#!/usr/bin/env python3
"""Builds the CUDA emulator (emulator.cpp) into DIR/libcuda.so.1, with DIR/libcublas.so.12 naming
the same library: the CUDA backend's kernels (CUDAKernels.swift) compiled as C++ for the CPU,
each with a launch trampoline that unpacks cuLaunchKernel's argument array.

    python3 Tests/cuda-emulator/make_emulator.py DIR
"""
import os, re, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
out = os.path.abspath(sys.argv[1])
os.makedirs(out, exist_ok=True)

swift = open(os.path.join(root, "Sources/StrataBackend/CUDA/CUDAKernels.swift")).read()
body = swift.split('#"""\n', 1)[1].rsplit('    """#', 1)[0]
lines = [l[4:] if l.startswith("    ") else l for l in body.split("\n")]
# The emulator defines the f16 conversions (the originals are PTX) and uses math.h's INFINITY.
drop = ("__device__ __forceinline__ float h2f(", "__device__ __forceinline__ half_t f2h(", "__device__ __forceinline__ half_t f2h_down(",
        "__device__ __forceinline__ half_t f2h_up(", "#define INFINITY", "typedef unsigned short half_t;")
source = "\n".join(l for l in lines if not l.startswith(drop))
source = source.replace("extern __shared__ float scores[];", "float* scores = (float*)emu::dynamicShared;")

kernels = []
for m in re.finditer(r'extern "C" __global__ void (\w+)\(([^)]*)\)', source):
    name, params = m.group(1), " ".join(m.group(2).split())
    types = []
    for p in params.split(","):
        p = p.strip()
        t = re.sub(r"\s*\b\w+$", "", p)          # drop the parameter name
        types.append(t)
    kernels.append((name, types))
source = source.replace('extern "C" __global__ void', "static void")

inc = [source, "", "struct EmulatedKernel { const char* name; void (*call)(void**); };"]
for name, types in kernels:
    args = ", ".join(f"*({t}*)a[{i}]" for i, t in enumerate(types))
    inc.append(f"static void launch_{name}(void** a) {{ {name}({args}); }}")
inc.append("static EmulatedKernel emulatedKernels[] = {")
inc += [f'    {{"{name}", launch_{name}}},' for name, _ in kernels]
inc.append("};")
open(os.path.join(out, "kernels.inc"), "w").write("\n".join(inc) + "\n")

library = os.path.join(out, "libcuda.so.1")
cxx = os.environ.get("CXX") or ("clang++" if subprocess.call(["which", "clang++"], stdout=subprocess.DEVNULL) == 0 else "g++")
subprocess.check_call([cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-w", "-I", out, os.path.join(here, "emulator.cpp"), "-o", library])
for alias in ("libcublas.so.12",):
    path = os.path.join(out, alias)
    if os.path.lexists(path): os.remove(path)
    os.symlink("libcuda.so.1", path)
print(f"{library}: {len(kernels)} kernels")
