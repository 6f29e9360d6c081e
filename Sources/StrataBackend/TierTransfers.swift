import StrataCore

/// The lanes FlexGen's schedule moves data on. On a GPU each is its own stream, so a weight
/// load, a cache load and a cache store run beside the computation and beside each other.
public enum TransferLane: String, Sendable, CaseIterable {
    case weights, cacheLoads, cacheStores, activations
}

/// A point in the compute stream: everything enqueued for computation before it was made.
/// A copy that reads what the computation wrote, or overwrites what it read, waits on one.
public final class ComputeFence: @unchecked Sendable {
    public let label: String
    /// The CUDA event (nil on the CPU, whose computation has finished when the fence is made).
    let event: CUDAEvent?

    init(label: String, event: CUDAEvent?) {
        self.label = label; self.event = event
    }
}

public struct TransferCopy: @unchecked Sendable {
    public enum Direction: String, Sendable { case hostToDevice, deviceToHost, deviceToDevice }
    public var direction: Direction
    public var source: UnsafeRawPointer
    public var destination: UnsafeMutableRawPointer
    public var count: Int

    public init(_ direction: Direction, from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, count: Int) {
        self.direction = direction; self.source = source; self.destination = destination; self.count = count
    }
}

/// What the offload engine needs of its compute backend besides the ops: memory of the device
/// and host tiers and copies between them, ordered against the computation by fences.
public protocol TierTransfers: Backend {
    /// Whether device-tier memory is host memory (the CPU backend): disk reads then land in it
    /// directly instead of through a host bounce buffer.
    var deviceMemoryIsHost: Bool { get }
    /// Device-tier memory for staging weights and cache, charged to `account`.
    func deviceMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer
    /// Host-tier memory the device copies from at full speed (page-locked on a GPU), 4096-aligned.
    func hostMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer
    /// Marks the computation enqueued so far.
    func computeFence(_ label: String) -> ComputeFence
    /// Runs `copies` on `lane` once every fence in `after` has passed; returns when they are done
    /// (the calling I/O thread waits, the computation does not).
    func transfer(_ copies: [TransferCopy], lane: TransferLane, after: [ComputeFence])
}

extension CPUBackend: TierTransfers {
    public var deviceMemoryIsHost: Bool { true }

    public func deviceMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer {
        .host(byteCount: bytes, backendName: name, account: account, alignment: 4096)
    }

    public func hostMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer {
        .host(byteCount: bytes, backendName: name, account: account, alignment: 4096)
    }

    /// The CPU computes synchronously: what was enqueued has run.
    public func computeFence(_ label: String) -> ComputeFence { ComputeFence(label: label, event: nil) }

    public func transfer(_ copies: [TransferCopy], lane: TransferLane, after: [ComputeFence]) {
        for c in copies where c.count > 0 { c.destination.copyMemory(from: c.source, byteCount: c.count) }
    }
}

extension CUDABackend: TierTransfers {
    public var deviceMemoryIsHost: Bool { false }

    public func deviceMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer {
        device.makeCurrent()
        // The device account is the allocator's own; a separate one is charged besides.
        let buffer = device.allocator.allocate(bytes)
        guard let account, account !== device.allocator.account else { return buffer }
        account.charge(bytes)
        return DeviceBuffer(pointer: buffer.pointer, byteCount: bytes, backendName: name, owner: buffer) { _ in account.refund(bytes) }
    }

    public func hostMemory(_ bytes: Int, account: MemoryAccount?) -> DeviceBuffer {
        device.makeCurrent()
        do { return try device.allocator.pinnedHost(bytes, account: account) } catch {
            // Page-locking can fail (a container's locked-memory limit): plain memory still works,
            // its copies only run slower and synchronously.
            return .host(byteCount: bytes, backendName: "cpu", account: account, alignment: 4096)
        }
    }

    public func computeFence(_ label: String) -> ComputeFence {
        device.makeCurrent()
        return ComputeFence(label: label, event: device.compute.record())
    }

    public func transfer(_ copies: [TransferCopy], lane: TransferLane, after: [ComputeFence]) {
        device.makeCurrent()
        let stream: CUDAStream
        switch lane {
        case .weights: stream = device.weightLoads
        case .cacheLoads, .activations: stream = device.cacheLoads
        case .cacheStores: stream = device.cacheStores
        }
        for fence in after { if let event = fence.event { stream.wait(for: event) } }
        for c in copies where c.count > 0 {
            let source = UInt64(UInt(bitPattern: c.source)), destination = UInt64(UInt(bitPattern: c.destination))
            switch c.direction {
            case .hostToDevice:
                driver.must(driver.cuMemcpyHtoDAsync(destination, c.source, c.count, stream.handle), "cuMemcpyHtoDAsync on \(lane)")
            case .deviceToHost:
                driver.must(driver.cuMemcpyDtoHAsync(c.destination, source, c.count, stream.handle), "cuMemcpyDtoHAsync on \(lane)")
            case .deviceToDevice:
                driver.must(driver.cuMemcpyDtoDAsync(destination, source, c.count, stream.handle), "cuMemcpyDtoDAsync on \(lane)")
            }
        }
        stream.synchronize()
    }
}
