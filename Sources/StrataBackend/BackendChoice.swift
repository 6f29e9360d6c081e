import StrataCore

/// Which backend computes: what the command line resolved `--backend` to. The offload engine
/// builds its compute backend from it with the device tier's account.
public enum BackendChoice: Sendable, Equatable {
    case cpu(threads: Int, weightFormat: CPUBackend.WeightFormat, int8Activations: Bool, cacheFormat: CPUBackend.CacheFormat = .f32,
             matmulPrecision: CPUBackend.MatmulPrecision = .f32)
    case cuda(ordinal: Int, precision: CUDABackend.ComputePrecision)

    public var isCUDA: Bool { if case .cuda = self { return true } else { return false } }

    /// A backend whose allocations are charged to `account` (the device tier), with the tier
    /// copies the offload engine needs. The engine's CPU backend keeps weights row-major
    /// (`packsWeights` false): it rebuilds tensors from byte images.
    public func make(account: MemoryAccount? = nil, packsWeights: Bool = true) throws -> any TierTransfers {
        switch self {
        case .cpu(let threads, let format, let int8, let cache, let precision):
            return CPUBackend(threads: threads, weightFormat: format, account: account, packsWeights: packsWeights, int8Activations: int8,
                              cacheFormat: cache, matmulPrecision: precision)
        case .cuda(let ordinal, let precision):
            return CUDABackend(device: try CUDADevice(ordinal: ordinal, account: account), precision: precision)
        }
    }
}
