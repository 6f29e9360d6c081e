#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import StrataCore

/// Memory owned by a backend. The model never reads `pointer` itself: on a GPU backend it is a
/// device address. `owner` keeps a mapping alive when a buffer aliases a checkpoint file.
public final class DeviceBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int
    public let backendName: String
    private let owner: AnyObject?
    private let deallocate: (@Sendable (UnsafeMutableRawPointer) -> Void)?

    public init(pointer: UnsafeMutableRawPointer, byteCount: Int, backendName: String,
                owner: AnyObject? = nil, deallocate: (@Sendable (UnsafeMutableRawPointer) -> Void)?) {
        self.pointer = pointer
        self.byteCount = byteCount
        self.backendName = backendName
        self.owner = owner
        self.deallocate = deallocate
    }

    /// Aligned host memory (64 bytes: cache lines and AVX-512; 4096 for direct I/O), charged to
    /// `account` while it lives.
    public static func host(byteCount: Int, backendName: String, account: MemoryAccount? = nil, alignment: Int = 64) -> DeviceBuffer {
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, alignment, max(byteCount, 64)) == 0, let raw else {
            fatalError("out of memory allocating \(byteCount) bytes")
        }
        guard let account else { return DeviceBuffer(pointer: raw, byteCount: byteCount, backendName: backendName) { free($0) } }
        account.charge(byteCount)
        return DeviceBuffer(pointer: raw, byteCount: byteCount, backendName: backendName) { pointer in
            free(pointer)
            account.refund(byteCount)
        }
    }

    deinit { deallocate?(pointer) }
}

/// Where the parts of a group-quantized tensor sit in its buffer: packed codes from byte 0,
/// then the f16 steps and f16 minimums, one per group, in group order.
public struct QuantizedLayout: Sendable {
    public let scheme: QuantizationScheme
    public let geometry: GroupGeometry
    public let stepsOffset: Int
    public let minsOffset: Int
    public let byteCount: Int

    public init(scheme: QuantizationScheme, shape: [Int]) {
        self.scheme = scheme
        geometry = scheme.geometry(shape)
        let dataBytes = geometry.groupCount * scheme.bytesPerGroup
        stepsOffset = (dataBytes + 63) & ~63
        minsOffset = stepsOffset + ((geometry.groupCount * 2 + 63) & ~63)
        byteCount = minsOffset + geometry.groupCount * 2
    }
}

/// A tensor handle: shape, element type and the backend buffer holding it. Row-major.
/// A quantized tensor has dtype `.u8` and a `quantization` layout; `shape` is the logical one.
public struct Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let dtype: DType
    public let buffer: DeviceBuffer
    public let quantization: QuantizedLayout?

    public init(shape: [Int], dtype: DType, buffer: DeviceBuffer, quantization: QuantizedLayout? = nil) {
        self.shape = shape
        self.dtype = dtype
        self.buffer = buffer
        self.quantization = quantization
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var rows: Int { shape.count >= 2 ? shape.dropLast().reduce(1, *) : 1 }
    public var columns: Int { shape.last ?? 1 }
    /// Bytes this tensor occupies (packed size for quantized tensors).
    public var byteCount: Int { quantization?.byteCount ?? elementCount * dtype.byteSize }

    /// f32 element pointer; only for backends whose buffers are host memory.
    @inline(__always) public var floats: UnsafeMutablePointer<Float> {
        buffer.pointer.assumingMemoryBound(to: Float.self)
    }
}
