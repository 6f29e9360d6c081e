import Dispatch
import StrataBackend
import StrataCore
import StrataFormats
import StrataModels
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Byte budgets per tier (nil: unlimited).
public struct TierBudgets: Sendable, Equatable {
    public var device: Int?
    public var host: Int?
    public var disk: Int?
    public init(device: Int? = nil, host: Int? = nil, disk: Int? = nil) { self.device = device; self.host = host; self.disk = disk }
}

/// Executes a `Policy`: decoder-layer weights, KV cache and activations live on device, host
/// and disk as the policy says, and each step runs FlexGen's zig-zag block schedule (token,
/// layer, gpu batch) with weight prefetch and cache/activation loads and stores on their own
/// I/O queues (or in line with `overlap` off). Embeddings and the LM head stay on the device.
public final class OffloadEngine: @unchecked Sendable {
    public let model: any CausalLM
    public let policy: Policy
    public let accounts: (device: MemoryAccount, host: MemoryAccount, disk: MemoryAccount)
    /// Computes the layers: the CPU backend, or a GPU whose copies run on their own streams.
    let compute: any TierTransfers
    /// Builds weight images and, with host attention, attends the host-resident cache rows.
    let hostBackend: CPUBackend
    /// Every tier copy with the fences it waited on, when asked for (tests check the ordering).
    public let transferLog: TransferLog?
    let source: any TensorSource
    let placements: [LayerPlacement]
    let residentDevice: [DeviceBuffer?]
    let residentHost: [DeviceBuffer?]
    /// Per layer, per tensor index: the file holding that tensor's image from byte 0.
    let weightFiles: [[Int: DiskFile]]
    let offloadDirectory: String?
    let weightQueue: DispatchQueue?, cacheQueue: DispatchQueue?, activationQueue: DispatchQueue?
    var caches: [[CacheUnit]] = []
    /// One file per gpu batch for disk-resident activation rows, opened by `beginBlock`.
    var activationFiles: [DiskFile] = []
    var capacity = 0
    /// Device staging for weights and for KV cache rows, in separate pools whose buffers are
    /// taken at one size per kind (the largest the plan allows), so a small request never holds
    /// a large idle buffer while a large one allocates anew: each pool stays at the number of
    /// buffers in flight, which is what the memory plan counts.
    let weightPool: BufferPool
    let cachePool: BufferPool
    /// Host bounce buffers for disk-resident activation rows.
    let hostPool: BufferPool
    /// The largest weight staging range of any layer.
    let maxStagingBytes: Int
    /// Per (layer, gpu batch) unit of the current block: the most host rows staged to the device
    /// (none with host attention) and the most disk rows.
    var stagedCacheRows = (host: 0, disk: 0)
    /// The positions per sequence the memory plan was made for.
    public let plannedCapacity: Int
    /// What of the model this engine runs: all of it, or a pipeline stage's layers (`forwardStage`).
    public let share: ModelShare
    var stageLayers: Range<Int> { share.layers ?? 0..<model.config.numLayers }

    public struct Placement: Sendable {
        public var weights: [Tier: Int] = [:]
        public var cache: [Tier: Int] = [:]
        public var activations: [Tier: Int] = [:]
    }
    /// Bytes actually placed on each tier (activations: the largest store of a gpu batch).
    public var placed: Placement { placement.withLock { $0 } }
    let placement = Mutex(Placement())

    /// Plans placement from tensor metadata, refuses a policy that cannot fit (naming the tier
    /// and the shortfall) before any weight is loaded, then places the layers.
    public init(directory: String, policy: Policy, budgets: TierBudgets, offloadDirectory: String?, threads: Int,
                weightFormat: CPUBackend.WeightFormat = .asStored, precision: PrecisionMap? = nil,
                promptLength: Int, capacity: Int, share: ModelShare = .whole,
                compute makeCompute: (@Sendable (MemoryAccount) throws -> any TierTransfers)? = nil, recordTransfers: Bool = false) throws {
        try policy.validate()
        self.policy = policy
        self.share = share
        let device = MemoryAccount(name: "device", budget: budgets.device)
        let host = MemoryAccount(name: "host", budget: budgets.host)
        let disk = MemoryAccount(name: "disk", budget: budgets.disk)
        accounts = (device, host, disk)
        // The CPU backend unless the caller names another (a GPU: `BackendChoice.make`).
        let compute = try makeCompute?(device) ?? CPUBackend(threads: threads, weightFormat: weightFormat, account: device, packsWeights: false)
        self.compute = compute
        transferLog = recordTransfers ? TransferLog() : nil
        // Device staging buffers are refilled only after the computation that read them is done.
        weightPool = BufferPool(backendName: compute.name, account: device, allocate: { compute.deviceMemory($0, account: device) },
                                releaseFence: { compute.computeFence("weight staging released") })
        cachePool = BufferPool(backendName: compute.name, account: device, allocate: { compute.deviceMemory($0, account: device) },
                               releaseFence: { compute.computeFence("cache staging released") })
        hostPool = BufferPool(backendName: "host", account: host, allocate: { compute.hostMemory($0, account: host) })
        let hostBackend = CPUBackend(threads: threads, weightFormat: weightFormat, account: host, packsWeights: false)
        self.hostBackend = hostBackend
        let config = try ModelConfig(directory: directory)
        let source = try TensorSources.open(directory: directory)
        self.source = source
        var weightMap = precision
        if policy.compressWeight && weightMap == nil { weightMap = PrecisionMap.uniform(layers: config.numLayers, bits: 4) }
        let cacheScheme = policy.compressCache ? QuantizationScheme.int4 : nil
        // Stored-quantized layers are loaded as stored (the loader reads strata_precision).
        let compression = Compression(weights: config.storedPrecision == nil ? weightMap : nil, cache: cacheScheme)

        // Plan from metadata only, with the memory model the policy search uses.
        let memory = try MemoryModel(directory: directory, weightFormat: weightFormat, precision: precision, threads: threads)
        let plans = memory.placements(policy, stage: share.layers)
        placements = plans
        maxStagingBytes = plans.map(\.stagingBytes).max() ?? 0
        let isStore = source is OffloadStore
        let needsOffloadFiles = plans.contains { p in p.disk > 0 && p.tensors.contains { !Self.imageIsStoreFile($0, isStore: isStore, source: source) } }
        if (needsOffloadFiles || policy.cache.disk > 0 || policy.activations.disk > 0) && offloadDirectory == nil {
            throw StrataError.invalidRequest("the policy puts data on disk; give --offload-dir DIR")
        }
        self.offloadDirectory = offloadDirectory
        plannedCapacity = capacity
        try memory.plan(policy, promptLength: promptLength, capacity: capacity, share: share).check(budgets)

        model = try ModelLoader.load(directory: directory, backend: compute, compression: compression, loadLayers: false, share: share)
        if policy.overlap {
            weightQueue = DispatchQueue(label: "strata.weights")
            cacheQueue = DispatchQueue(label: "strata.cache")
            activationQueue = DispatchQueue(label: "strata.activations")
        } else {
            (weightQueue, cacheQueue, activationQueue) = (nil, nil, nil)
        }

        let placedLayers = try Self.place(plans, source: source, hostBackend: hostBackend, compute: compute, accounts: accounts,
                                          isStore: isStore, offloadDirectory: offloadDirectory)
        source.releaseMappings()
        residentDevice = placedLayers.device
        residentHost = placedLayers.host
        weightFiles = placedLayers.files
        placement.withLock { $0.weights = placedLayers.bytes }
    }

    /// Places every layer: the device prefix and host middle of its image in memory, the disk
    /// tail in files (the offload store's own file when the bytes are identical, else an image
    /// file written to the offload directory).
    static func place(_ plans: [LayerPlacement], source: any TensorSource, hostBackend: CPUBackend, compute: any TierTransfers,
                      accounts: (device: MemoryAccount, host: MemoryAccount, disk: MemoryAccount), isStore: Bool,
                      offloadDirectory: String?) throws
        -> (device: [DeviceBuffer?], host: [DeviceBuffer?], files: [[Int: DiskFile]], bytes: [Tier: Int]) {
        let (device, host, disk) = accounts
        var residentDevice: [DeviceBuffer?] = [], residentHost: [DeviceBuffer?] = [], files: [[Int: DiskFile]] = []
        var bytes: [Tier: Int] = [:]
        for (j, p) in plans.enumerated() {
            let specs = p.tensors.map(\.spec)
            var images: [Int: Tensor] = [:]
            func image(_ i: Int) throws -> Tensor {
                if let t = images[i] { return t }
                let spec = specs[i]
                let t: Tensor
                if let scheme = p.tensors[i].quantization, !source.contains(spec.name) {
                    // Stored quantized: the codes are taken as they are.
                    t = hostBackend.upload(quantized: try QuantizedCheckpoint.read(source, name: spec.name, shape: spec.shape, scheme: scheme))
                } else {
                    let view = try source.require(spec.name, shape: spec.shape)
                    let plain = hostBackend.upload(weight: view.bytes, dtype: view.dtype, shape: view.shape, owner: view.file)
                    t = p.tensors[i].quantization.map { hostBackend.quantize(plain, scheme: $0) } ?? plain
                }
                images[i] = t
                return t
            }
            let deviceBuffer = p.device > 0 ? compute.deviceMemory(p.device, account: device) : nil
            let hostBuffer = p.host > 0 ? compute.hostMemory(p.host, account: host) : nil
            var layerFiles: [Int: DiskFile] = [:]
            for (i, t) in p.tensors.enumerated() {
                let start = t.slot, end = t.slot + t.byteCount
                if start < p.device, let deviceBuffer {
                    let n = min(end, p.device) - start
                    compute.transfer([TransferCopy(.hostToDevice, from: try image(i).buffer.pointer, to: deviceBuffer.pointer + start, count: n)],
                                     lane: .weights, after: [])
                }
                if end > p.device && start < p.device + p.host, let hostBuffer {
                    let from = max(start, p.device), to = min(end, p.device + p.host)
                    (hostBuffer.pointer + (from - p.device)).copyMemory(from: try image(i).buffer.pointer + (from - start), byteCount: to - from)
                }
                if t.slot + t.slotBytes > p.device + p.host {
                    if Self.imageIsStoreFile(t, isStore: isStore, source: source), let store = source as? OffloadStore {
                        layerFiles[i] = try DiskFile(path: store.path(of: store.entries[t.spec.name]!), create: false)
                    } else {
                        let path = FileSystem.join(try Self.directory(offloadDirectory!, "weights"), "L\(j)-T\(i).bin")
                        let file = try DiskFile(path: path, create: true)
                        try Self.writeImage(try image(i), bytes: t.byteCount, to: file, host: host)
                        layerFiles[i] = file
                    }
                    disk.charge(t.slot + t.slotBytes - max(t.slot, p.device + p.host))
                }
            }
            // The store pages read to build this layer's images are not part of any tier.
            source.releaseMappings()
            residentDevice.append(deviceBuffer)
            residentHost.append(hostBuffer)
            files.append(layerFiles)
            bytes[.device, default: 0] += p.device
            bytes[.host, default: 0] += p.host
            bytes[.disk, default: 0] += p.disk
        }
        return (residentDevice, residentHost, files, bytes)
    }

    /// Files the disk tier reads weights from, in layer order.
    public var diskWeightFiles: [String] {
        var seen = Set<String>()
        return weightFiles.flatMap { files in files.keys.sorted().map { files[$0]!.path } }.filter { seen.insert($0).inserted }
    }

    /// Whether a tensor's disk bytes can be read straight from the offload store it came from.
    static func imageIsStoreFile(_ t: TensorImage, isStore: Bool, source: any TensorSource) -> Bool {
        guard isStore, t.quantization == nil, let store = source as? OffloadStore, let e = store.entries[t.spec.name] else { return false }
        return e.dtype == t.dtype && e.bytes == t.byteCount
    }

    static func directory(_ base: String, _ name: String) throws -> String {
        let path = FileSystem.join(base, name)
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw StrataError.ioFailure(path: path, detail: "cannot create the offload directory: \(error)")
        }
        return path
    }

    /// Writes a tensor image to `file` through a 4096-aligned bounce buffer, padded to 4096.
    static func writeImage(_ t: Tensor, bytes: Int, to file: DiskFile, host: MemoryAccount) throws {
        let bounce = DeviceBuffer.host(byteCount: min(DiskFile.chunk, DiskFile.alignUp(bytes)), backendName: "cpu", account: host,
                                       alignment: 4096)
        var offset = 0
        while offset < bytes {
            let n = min(DiskFile.chunk, bytes - offset)
            bounce.pointer.copyMemory(from: t.buffer.pointer + offset, byteCount: n)
            let padded = DiskFile.alignUp(n)
            if padded > n { (bounce.pointer + n).initializeMemory(as: UInt8.self, repeating: 0, count: padded - n) }
            try file.write(from: bounce.pointer, count: padded, at: offset)
            offset += n
        }
    }

    // MARK: Weights

    /// A layer's weights on the device: resident tensors in place, the rest assembled in a
    /// staging buffer from host memory and disk (direct I/O, chunks read in parallel).
    func loadLayer(_ j: Int) throws -> LayerWeights {
        let p = placements[j]
        let start = p.stagingStart
        let taken = p.stagingBytes > 0 ? weightPool.takeFenced(maxStagingBytes) : nil
        let staging = taken?.buffer
        if let staging {
            // The buffer may still be read by the computation of the layer it held before.
            let after = taken?.reusable.map { [$0] } ?? []
            var copies: [TransferCopy] = []
            if p.device > start, let resident = residentDevice[j] {
                copies.append(TransferCopy(.deviceToDevice, from: resident.pointer + start, to: staging.pointer, count: p.device - start))
            }
            if p.host > 0, let host = residentHost[j] {
                copies.append(TransferCopy(.hostToDevice, from: host.pointer, to: staging.pointer + (p.device - start), count: p.host))
            }
            move(copies, lane: .weights, after: after, purpose: "weights L\(j)")
            let diskStart = p.device + p.host
            var reads: [DiskReader.Job] = []
            for (i, t) in p.tensors.enumerated() where t.slot + t.slotBytes > diskStart {
                let from = max(t.slot, diskStart)
                reads += DiskReader.chunks(of: weightFiles[j][i]!, at: from - t.slot, into: staging.pointer + (from - start),
                                           count: t.slot + t.slotBytes - from)
            }
            try readFromDisk(reads, lane: .weights, after: after, purpose: "weights L\(j) from disk")
        }
        var tensors: [String: Tensor] = [:]
        for t in p.tensors {
            let buffer: DeviceBuffer
            if t.slot < start || staging == nil {
                let resident = residentDevice[j]!
                buffer = DeviceBuffer(pointer: resident.pointer + t.slot, byteCount: t.byteCount, backendName: compute.name,
                                      owner: resident, deallocate: nil)
            } else {
                buffer = DeviceBuffer(pointer: staging!.pointer + (t.slot - start), byteCount: t.byteCount, backendName: compute.name,
                                      owner: staging, deallocate: nil)
            }
            tensors[t.spec.key] = Tensor(shape: t.spec.shape, dtype: t.dtype, buffer: buffer,
                                         quantization: t.quantization.map { QuantizedLayout(scheme: $0, shape: t.spec.shape) })
        }
        return LayerWeights(tensors)
    }

    // MARK: Tier copies

    /// Copies between tiers on `lane` after `after`, logged when the engine records transfers.
    func move(_ copies: [TransferCopy], lane: TransferLane, after: [ComputeFence], purpose: String) {
        guard !copies.isEmpty else { return }
        transferLog?.append(lane: lane, purpose: purpose, copies: copies, after: after)
        compute.transfer(copies, lane: lane, after: after)
    }

    /// Direct-I/O reads into device-tier memory: straight in when that is host memory (the CPU
    /// backend), else through page-locked bounce chunks copied up to the device, a round of
    /// `DiskReader.lanes` chunks at a time.
    func readFromDisk(_ jobs: [DiskReader.Job], lane: TransferLane, after: [ComputeFence], purpose: String) throws {
        guard !jobs.isEmpty else { return }
        if compute.deviceMemoryIsHost { return try DiskReader.read(jobs) }
        let bounce = hostPool.take(DiskReader.lanes * DiskFile.chunk)
        for round in stride(from: 0, to: jobs.count, by: DiskReader.lanes) {
            let part = Array(jobs[round..<min(round + DiskReader.lanes, jobs.count)])
            precondition(part.allSatisfy { $0.count <= DiskFile.chunk }, "disk reads are split into chunks of at most \(DiskFile.chunk) bytes")
            try DiskReader.read(part.enumerated().map { .init(file: $1.file, fileOffset: $1.fileOffset,
                                                              destination: bounce.pointer + $0 * DiskFile.chunk, count: $1.count) })
            move(part.enumerated().map { TransferCopy(.hostToDevice, from: bounce.pointer + $0 * DiskFile.chunk, to: $1.destination, count: $1.count) },
                 lane: lane, after: after, purpose: purpose)
        }
    }

    /// Writes device-tier bytes to a file at `offset`: straight from them when they are host
    /// memory, else copied down to a bounce buffer first (after `after`).
    func writeToDisk(_ file: DiskFile, from source: UnsafeRawPointer, count: Int, at offset: Int, lane: TransferLane, after: [ComputeFence],
                     purpose: String) throws {
        if compute.deviceMemoryIsHost { return try file.write(from: source, count: count, at: offset) }
        let bounce = hostPool.take(count)
        move([TransferCopy(.deviceToHost, from: source, to: bounce.pointer, count: count)], lane: lane, after: after, purpose: purpose)
        try file.write(from: bounce.pointer, count: count, at: offset)
    }
}

/// The tier copies an engine made, in order, with the compute fences each waited on.
public final class TransferLog: Sendable {
    public struct Entry: Sendable {
        public let lane: TransferLane
        public let purpose: String
        public let directions: [TransferCopy.Direction]
        public let bytes: Int
        /// Labels of the fences the copies waited on.
        public let after: [String]
    }
    private let entries = Mutex<[Entry]>([])

    func append(lane: TransferLane, purpose: String, copies: [TransferCopy], after: [ComputeFence]) {
        let entry = Entry(lane: lane, purpose: purpose, directions: copies.map(\.direction), bytes: copies.reduce(0) { $0 + $1.count },
                          after: after.map(\.label))
        entries.withLock { $0.append(entry) }
    }

    public var all: [Entry] { entries.withLock { $0 } }
}

/// Direct-I/O reads spread over a few lanes: one sequential 16 MiB stream rarely keeps a
/// virtual disk's queue full, and the lanes block in the kernel, not on the cores.
public enum DiskReader {
    public struct Job: @unchecked Sendable {
        public var file: DiskFile
        public var fileOffset: Int
        public var destination: UnsafeMutableRawPointer
        public var count: Int
        public init(file: DiskFile, fileOffset: Int, destination: UnsafeMutableRawPointer, count: Int) {
            self.file = file; self.fileOffset = fileOffset; self.destination = destination; self.count = count
        }
    }

    public static let lanes = 4

    /// `count` bytes of `file` from `offset` into `destination`, as jobs of at most one chunk.
    public static func chunks(of file: DiskFile, at offset: Int, into destination: UnsafeMutableRawPointer, count: Int) -> [Job] {
        stride(from: 0, to: count, by: DiskFile.chunk).map {
            Job(file: file, fileOffset: offset + $0, destination: destination + $0, count: min(DiskFile.chunk, count - $0))
        }
    }
    static let queue = DispatchQueue(label: "strata.disk-read", attributes: .concurrent)

    public static func read(_ jobs: [Job]) throws {
        guard !jobs.isEmpty else { return }
        if jobs.count == 1 { return try jobs[0].file.read(into: jobs[0].destination, count: jobs[0].count, at: jobs[0].fileOffset) }
        let failure = Mutex<Error?>(nil)
        let group = DispatchGroup()
        let next = Mutex(0)
        for _ in 0..<min(lanes, jobs.count) {
            queue.async(group: group) {
                while true {
                    let i = next.withLock { n -> Int in defer { n += 1 }; return n }
                    guard i < jobs.count else { return }
                    let job = jobs[i]
                    do { try job.file.read(into: job.destination, count: job.count, at: job.fileOffset) } catch {
                        failure.withLock { $0 = error }
                        return
                    }
                }
            }
        }
        group.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Sequential direct-read bandwidth (bytes/s) over up to `limit` bytes of `files`, read the
    /// way the engine reads weights; the disk-read bound of an offloaded run is measured with it.
    public static func measureBandwidth(files: [String], limit: Int) throws -> (bytes: Int, seconds: Double) {
        let buffer = DeviceBuffer.host(byteCount: lanes * DiskFile.chunk, backendName: "cpu", alignment: 4096)
        var jobs: [Job] = []
        var total = 0
        for path in files where total < limit {
            let file = try DiskFile(path: path, create: false)
            var offset = 0
            let size = DiskFile.alignDown(file.size)
            while offset < size && total < limit {
                let n = min(DiskFile.chunk, size - offset)
                // The data is discarded: jobs share a few destination chunks.
                jobs.append(Job(file: file, fileOffset: offset, destination: buffer.pointer + (jobs.count % lanes) * DiskFile.chunk, count: n))
                offset += n
                total += n
            }
        }
        let start = Clock.now()
        try read(jobs)
        return (total, Clock.now() - start)
    }
}
