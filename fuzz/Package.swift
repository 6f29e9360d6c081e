// swift-tools-version:6.0
import PackageDescription

// libFuzzer harnesses, one per parser Strata runs on files and requests written by others.
// A package of its own so that the main build never sees `-sanitize=fuzzer` (which supplies
// `main`); scripts/fuzz.sh builds it with `--sanitize fuzzer --sanitize address`, in debug so
// Strata's own overflow and bounds checks stay on (its library targets are -O in debug).
let harnesses = [
    "FuzzSafeTensors", "FuzzSafeTensorsIndex", "FuzzConfigs", "FuzzTokenizerJSON", "FuzzTokenizerFiles",
    "FuzzTokenizerText", "FuzzJobLine", "FuzzPolicy", "FuzzClusterSpec", "FuzzOffloadManifest", "FuzzGGUF",
    "FuzzChatTemplate",
]

let package = Package(
    name: "StrataFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "Strata", path: "..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [.product(name: "StrataRuntime", package: "Strata")]),
    ] + harnesses.map { name in
        .executableTarget(
            name: name,
            dependencies: ["FuzzSupport", .product(name: "StrataRuntime", package: "Strata"),
                           .product(name: "StrataPlanning", package: "Strata")],
            // libFuzzer provides main; the harness only exports LLVMFuzzerTestOneInput.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])])
    },
    swiftLanguageModes: [.v6]
)
