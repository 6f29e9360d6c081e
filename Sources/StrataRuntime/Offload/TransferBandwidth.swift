import StrataBackend
import StrataCore

/// Host-to-device and device-to-host copy speed between the host tier's memory (page-locked on
/// a GPU) and device memory, as the engine's weight and cache lanes copy: the bound a
/// weight-transfer-bound decode step is measured against.
public enum TransferBandwidth {
    public struct Result: Sendable {
        public let bytes: Int
        /// Bytes per second, median of the repeats.
        public let hostToDevice: Double
        public let deviceToHost: Double
    }

    public static func measure(_ compute: any TierTransfers, bytes: Int = 256 << 20, repeats: Int = 5) -> Result {
        let host = compute.hostMemory(bytes, account: nil)
        let device = compute.deviceMemory(bytes, account: nil)
        host.pointer.initializeMemory(as: UInt8.self, repeating: 1, count: bytes)
        func median(_ direction: TransferCopy.Direction, lane: TransferLane) -> Double {
            let copy = direction == .hostToDevice ? TransferCopy(direction, from: host.pointer, to: device.pointer, count: bytes)
                : TransferCopy(direction, from: device.pointer, to: host.pointer, count: bytes)
            compute.transfer([copy], lane: lane, after: [])   // first touch and driver set-up
            let rates = (0..<max(1, repeats)).map { _ -> Double in
                let start = Clock.now()
                compute.transfer([copy], lane: lane, after: [])
                return Double(bytes) / max(Clock.now() - start, 1e-9)
            }.sorted()
            return rates[rates.count / 2]
        }
        return Result(bytes: bytes, hostToDevice: median(.hostToDevice, lane: .weights), deviceToHost: median(.deviceToHost, lane: .cacheStores))
    }
}

extension OffloadEngine {
    /// Copy speed between this engine's host tier and device (`TransferBandwidth`).
    public func measureTransferBandwidth(bytes: Int = 256 << 20) -> TransferBandwidth.Result {
        TransferBandwidth.measure(compute, bytes: bytes)
    }

    /// Weight bytes a decode step copies from the host tier to the device (every layer's host
    /// share, once per block).
    public var hostWeightBytesPerStep: Int { placed.weights[.host] ?? 0 }

    /// The backend computing the layers ("cpu" or "cuda").
    public var computeName: String { compute.name }
}
