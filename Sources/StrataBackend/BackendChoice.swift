import StrataCore

/// Which backend computes: what the command line resolved `--backend` to. The offload engine
/// builds its compute backend from it with the device tier's account.
public enum BackendChoice: Sendable, Equatable {
    case cpu(threads: Int, weightFormat: CPUBackend.WeightFormat, int8Activations: Bool)
    case cuda(ordinal: Int, precision: CUDABackend.ComputePrecision)

    public var isCUDA: Bool { if case .cuda = self { return true } else { return false } }

    /// A backend whose allocations are charged to `account` (the device tier).
    public func make(account: MemoryAccount? = nil, packsWeights: Bool = true) throws -> any Backend {
        switch self {
        case .cpu(let threads, let format, let int8):
            return CPUBackend(threads: threads, weightFormat: format, account: account, packsWeights: packsWeights, int8Activations: int8)
        case .cuda(let ordinal, let precision):
            return CUDABackend(device: try CUDADevice(ordinal: ordinal, account: account), precision: precision)
        }
    }

    /// The backend with the tier copies the offload engine needs (both backends have them).
    public func makeTransfers(account: MemoryAccount?) throws -> any TierTransfers {
        switch self {
        case .cpu(let threads, let format, let int8):
            return CPUBackend(threads: threads, weightFormat: format, account: account, packsWeights: false, int8Activations: int8)
        case .cuda(let ordinal, let precision):
            return CUDABackend(device: try CUDADevice(ordinal: ordinal, account: account), precision: precision)
        }
    }
}
