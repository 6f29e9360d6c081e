import Dispatch
import Synchronization
import StrataBackend
import StrataCore
import StrataRuntime
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `strata profile`: measures this machine for the cost model. On the CPU backend the device
/// is RAM, so "device" rates are the CPU backend's own kernels and host<->device links are
/// memory copies; the disk is measured with direct I/O in the offload directory.
public struct Profiler {
    public var threads: Int
    public var offloadDirectory: String
    public var thorough: Bool
    /// Existing files (a file or a directory of them, e.g. an offload store's tensors) to measure
    /// direct reads on instead of a freshly written file: a virtual disk's host may cache fresh
    /// writes and report reads far faster than a real run sees.
    public var diskReadSample: String?
    /// One line per finished measurement (progress).
    public var report: (String) -> Void = { _ in }

    public init(threads: Int, offloadDirectory: String, thorough: Bool) {
        self.threads = threads; self.offloadDirectory = offloadDirectory; self.thorough = thorough
    }

    var repeats: Int { thorough ? 9 : 3 }

    func median(_ body: () throws -> Double) rethrows -> Double {
        var samples: [Double] = []
        for _ in 0..<repeats { samples.append(try body()) }
        return samples.sorted()[samples.count / 2]
    }

    public func measure() throws -> HardwareProfile {
        let backend = CPUBackend(threads: threads)
        var rng = SeededGenerator(seed: 3)

        // Memory copy (host <-> device on a CPU-only machine), 256 MiB.
        let copyBytes = (thorough ? 512 : 256) << 20
        let a = DeviceBuffer.host(byteCount: copyBytes, backendName: "cpu"), b = DeviceBuffer.host(byteCount: copyBytes, backendName: "cpu")
        memset(a.pointer, 1, copyBytes)
        memset(b.pointer, 2, copyBytes)
        let copy = median {
            let start = Clock.now()
            b.pointer.copyMemory(from: a.pointer, byteCount: copyBytes)
            return Double(copyBytes) / (Clock.now() - start)
        }
        report("memory copy        \((copy / 1e9).formatted2) GB/s")

        // GEMM: prefill-like (512 rows) and decode-like (16 rows) on an f16 weight; weight
        // streaming (1 row on a weight far larger than cache).
        func weight(_ n: Int, _ k: Int) -> Tensor {
            let values = (0..<(n * k)).map { _ in Float16(Float.random(in: -1...1, using: &rng)) }
            return values.withUnsafeBytes { backend.upload(weight: $0, dtype: .f16, shape: [n, k], owner: nil) }
        }
        func activations(_ m: Int, _ k: Int) -> Tensor {
            backend.upload(floats: (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [m, k])
        }
        // The matrices of a decoder layer with hidden size 2048 (attention projections, FFN up
        // and down): the rate is their total flops over their total time, as a layer runs them.
        // Square-ish small weights alone (3072x1024) misstated OPT-1.3B's layer by 10-20%.
        let w = weight(3072, 1024)
        let layer = [weight(2048, 2048), weight(8192, 2048), weight(2048, 8192)]
        let layerCalls = [4, 1, 1]
        let gemm = { (m: Int) -> Double in
            let inputs = layer.map { activations(m, $0.shape[1]) }
            for (x, w) in zip(inputs, layer) { _ = backend.linear(x, weight: w, bias: nil) }
            return median {
                let start = Clock.now()
                var flops = 0.0
                for ((x, w), calls) in zip(zip(inputs, layer), layerCalls) {
                    for _ in 0..<calls { _ = backend.linear(x, weight: w, bias: nil) }
                    flops += 2 * Double(m * w.shape[0] * w.shape[1] * calls)
                }
                return flops / (Clock.now() - start)
            }
        }
        let mmPrefill = gemm(512), mmDecode = gemm(16)
        report("GEMM prefill       \((mmPrefill / 1e9).formatted2) GFLOP/s (512 rows); decode \((mmDecode / 1e9).formatted2) GFLOP/s (16 rows)")
        let big = weight(thorough ? 65536 : 32768, 2048)
        let one = activations(1, 2048)
        _ = backend.linear(one, weight: big, bias: nil)
        let streaming = median {
            let start = Clock.now()
            _ = backend.linear(one, weight: big, bias: nil)
            return Double(big.byteCount) / (Clock.now() - start)
        }
        report("weight streaming   \((streaming / 1e9).formatted2) GB/s (batch-1 decode GEMM)")

        // Attention: prefill (128 queries over 128 keys) and decode (1 query over 512 keys).
        func attention(queries: Int, past: Int) -> Double {
            let batch = 8, heads = 12, d = 64, total = past + queries
            let layout = AttentionLayout(batch: batch, length: queries, pastLength: past, padding: [Int](repeating: 0, count: batch),
                                         heads: heads, kvHeads: heads, headDim: d, scale: 0.125)
            let cacheShape = [batch, heads, total, d]
            let k = backend.upload(floats: (0..<cacheShape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: cacheShape)
            let q = activations(batch * queries, heads * d)
            _ = backend.attention(query: q, keyCache: k, valueCache: k, layout: layout)
            return median {
                let start = Clock.now()
                _ = backend.attention(query: q, keyCache: k, valueCache: k, layout: layout)
                // FlexGen counts 4 * h * context flops per query token (q K^T and P V).
                return 4 * Double(batch * queries * heads * d) * Double(total) / (Clock.now() - start)
            }
        }
        let bmmPrefill = attention(queries: 128, past: 0), bmmDecode = attention(queries: 1, past: 511)
        report("attention          \((bmmPrefill / 1e9).formatted2) GFLOP/s prefill, \((bmmDecode / 1e9).formatted2) GFLOP/s decode")

        // Dequantization of 4-bit weights (compressed bytes per second).
        let quantized = backend.quantize(w, scheme: .int4)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: quantized.elementCount)
        defer { scratch.deallocate() }
        let dequantize = median {
            let start = Clock.now()
            CPUBackend.decode(quantized, into: scratch)
            return Double(quantized.byteCount) / (Clock.now() - start)
        }
        report("4-bit dequantize   \((dequantize / 1e9).formatted2) GB/s of packed bytes")

        // Disk: direct-I/O sequential write then read of a scratch file in the offload directory,
        // and how much reading it at the same time as prefill-sized GEMMs slows the pair down.
        let x64 = activations(64, 1024)
        let (read, write, contention) = try measureDisk { _ = backend.linear(x64, weight: w, bias: nil) }
        report("disk (direct I/O)  read \((read / 1e9).formatted2) GB/s, write \((write / 1e9).formatted2) GB/s; "
               + "contention with compute \(contention.formatted2)")

        let memory = Double(Self.physicalMemory())
        var fs = statvfs()
        let diskFree = statvfs(offloadDirectory, &fs) == 0 ? Double(fs.f_bavail) * Double(fs.f_frsize) : 100e9
        return HardwareProfile(
            name: "cpu-\(Self.hostname())", source: "measured by strata profile (\(thorough ? "thorough" : "quick"), \(threads) threads)",
            deviceMemory: memory, hostMemory: memory, diskCapacity: diskFree,
            ctog: copy, gtocCache: copy, gtocHidden: copy, dtoc: read, ctodCache: write, ctodHidden: write,
            mmPrefill: mmPrefill, mmDecode: mmDecode, bmmPrefill: bmmPrefill, bmmDecode: bmmDecode, cpu: bmmDecode,
            dequantize: dequantize, deviceMemoryBandwidth: streaming, copiesShareCompute: true, diskComputeContention: contention)
    }

    func measureDisk(compute: () -> Void) throws -> (read: Double, write: Double, contention: Double) {
        try FileManager.default.createDirectory(atPath: offloadDirectory, withIntermediateDirectories: true)
        let path = FileSystem.join(offloadDirectory, "strata-profile.tmp")
        defer { unlink(path) }
        let bytes = (thorough ? 8192 : 2048) << 20
        let file = try DiskFile(path: path, create: true)
        let buffer = DeviceBuffer.host(byteCount: DiskFile.chunk, backendName: "cpu", alignment: 4096)
        memset(buffer.pointer, 7, DiskFile.chunk)
        var start = Clock.now()
        var offset = 0
        while offset < bytes {
            try file.write(from: buffer.pointer, count: DiskFile.chunk, at: offset)
            offset += DiskFile.chunk
        }
        _ = fsync(file.descriptor)
        let write = Double(bytes) / (Clock.now() - start)
        let jobs = stride(from: 0, to: bytes, by: DiskFile.chunk).map {
            DiskReader.Job(file: file, fileOffset: $0, destination: buffer.pointer, count: DiskFile.chunk)
        }
        if let sample = diskReadSample {
            var files: [String] = []
            if FileSystem.isDirectory(sample) {
                files = (try FileManager.default.contentsOfDirectory(atPath: sample)).sorted().map { FileSystem.join(sample, $0) }
            } else {
                files = [sample]
            }
            let (read, seconds) = try DiskReader.measureBandwidth(files: files, limit: bytes)
            return (Double(read) / seconds, write, try contention(jobs, compute: compute))
        }
        start = Clock.now()
        try DiskReader.read(jobs)
        return (Double(bytes) / (Clock.now() - start), write, try contention(jobs, compute: compute))
    }

    /// The median of three trials of `contentionTrial` (one trial on this VM ranged 0.19-0.59).
    func contention(_ jobs: [DiskReader.Job], compute: () -> Void) throws -> Double {
        var trials: [Double] = []
        for _ in 0..<3 { trials.append(try contentionTrial(jobs, compute: compute)) }
        return trials.sorted()[1]
    }

    /// Reads `jobs` alone, computes alone for about as long, then both at once: the share of the
    /// shorter that did not hide under the longer, (together - max) / min, in 0...1.
    func contentionTrial(_ jobs: [DiskReader.Job], compute: () -> Void) throws -> Double {
        var start = Clock.now()
        try DiskReader.read(jobs)
        let disk = Clock.now() - start
        start = Clock.now()
        compute()
        let once = max(Clock.now() - start, 1e-6)
        let calls = max(1, Int(disk / once))
        start = Clock.now()
        for _ in 0..<calls { compute() }
        let alone = Clock.now() - start
        let failure = Mutex<Error?>(nil)
        let group = DispatchGroup()
        start = Clock.now()
        DispatchQueue.global().async(group: group) {
            do { try DiskReader.read(jobs) } catch { failure.withLock { $0 = error } }
        }
        for _ in 0..<calls { compute() }
        group.wait()
        let together = Clock.now() - start
        if let error = failure.withLock({ $0 }) { throw error }
        return min(1, max(0, (together - max(disk, alone)) / min(disk, alone)))
    }

    static func physicalMemory() -> Int {
        Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    public static func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Double {
    var formatted2: String { String(Double(Int((self * 100).rounded())) / 100) }
}
