// swift-tools-version:6.1
import PackageDescription

// Kernels are compiled for Haswell (AVX2 + FMA + F16C): without these flags SIMD fused
// multiply-add and Float16 conversion become library calls (see PLATFORM-NOTES). Haswell is
// chosen over `native` so the binary runs on any x86-64 server made since 2013.
#if arch(x86_64)
let cpuFlags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let cpuFlags: [SwiftSetting] = []
#endif
// The library layers are optimized in debug builds too: the test suite runs real models
// (SmolLM2-135M through its fused dequantize kernels), which unoptimized Swift runs ~100x slower.
let kernelSettings: [SwiftSetting] = cpuFlags + [.unsafeFlags(["-Ounchecked"], .when(configuration: .release)),
                                                 .unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "Strata",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "strata", targets: ["strata"]),
        .library(name: "StrataRuntime", targets: ["StrataRuntime"]),
        .library(name: "StrataPlanning", targets: ["StrataPlanning"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        // The HTTP server (`strata serve`). Default traits off: they pull swift-configuration,
        // which the server does not use.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // oneDNN's headers only: the library is opened at run time (OneDNN.swift).
        .systemLibrary(
            name: "CDNNL",
            providers: [.apt(["libdnnl-dev"])]
        ),
        // Open MPI's headers only: the library is opened at run time (MPIWorld.swift).
        .systemLibrary(
            name: "CMPI",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        .systemLibrary(
            name: "CCbc",
            pkgConfig: "cbc",
            providers: [.apt(["coinor-libcbc-dev"])]
        ),
        // Integer dot-product kernels (AVX512-VNNI) behind their own target attributes, chosen at
        // run time; optimized in debug builds too (the tests run them).
        .target(name: "CStrataKernels", cSettings: [.unsafeFlags(["-O2"])]),
        // Layer 1: shapes, dtypes, errors, JSON values. No knowledge of models.
        .target(name: "StrataCore", swiftSettings: kernelSettings),
        // Layer 2: safetensors, Hugging Face configs, tokenizers.
        .target(name: "StrataFormats", dependencies: ["StrataCore"], swiftSettings: kernelSettings),
        // Layer 3: the Backend protocol and the CPU backend (OpenBLAS, oneDNN's bf16 matmuls, SIMD kernels).
        .target(name: "StrataBackend", dependencies: ["StrataCore", "COpenBLAS", "CDNNL", "CStrataKernels"], swiftSettings: kernelSettings),
        // Layer 4: architectures (OPT, Llama) written once against Backend.
        .target(name: "StrataModels", dependencies: ["StrataCore", "StrataFormats", "StrataBackend"], swiftSettings: kernelSettings),
        // Layer 5: KV cache, sampling, stopping, the batched generator.
        .target(name: "StrataRuntime", dependencies: ["StrataCore", "StrataFormats", "StrataBackend", "StrataModels", "CStrataKernels"],
                swiftSettings: kernelSettings),
        // Layer 6: hardware profiles, cost model, policy search (LP via COIN-OR CBC).
        .target(name: "StrataPlanning", dependencies: ["StrataCore", "StrataFormats", "StrataBackend", "StrataModels", "StrataRuntime", "CCbc",
                                                       .product(name: "Yams", package: "Yams")],
                swiftSettings: kernelSettings),
        // Layer 7: pipeline stages over MPI ranks executing a cluster plan.
        .target(name: "StrataDistributed", dependencies: ["StrataCore", "StrataBackend", "StrataModels", "StrataRuntime", "StrataPlanning", "CMPI"],
                swiftSettings: kernelSettings),
        // Layer 7: the OpenAI-compatible server and its continuous-batching scheduler.
        .target(name: "StrataServe", dependencies: ["StrataCore", "StrataFormats", "StrataBackend", "StrataModels", "StrataRuntime",
                                                    .product(name: "Hummingbird", package: "hummingbird"),
                                                    .product(name: "Prometheus", package: "swift-prometheus")],
                swiftSettings: kernelSettings),
        // Layer 8: the command line. Thin: parse, call the layers below, print.
        .executableTarget(
            name: "strata",
            dependencies: [
                "StrataServe", "StrataDistributed", "StrataPlanning", "StrataRuntime", "StrataFormats", "StrataBackend", "StrataCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: cpuFlags
        ),
        .testTarget(
            name: "StrataTests",
            dependencies: ["StrataRuntime", "StrataPlanning", "StrataDistributed", "StrataServe"],
            swiftSettings: cpuFlags
        ),
    ],
    swiftLanguageModes: [.v6]
)
