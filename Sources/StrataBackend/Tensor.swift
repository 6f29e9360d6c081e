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
    /// Every group's minimum is -zero * step (`QuantizedTensor.zeroCode`), when known: kernels
    /// may then skip the minimums. Nil reads them.
    public var zero: Int? = nil

    public init(scheme: QuantizationScheme, shape: [Int]) {
        self.scheme = scheme
        geometry = scheme.geometry(shape)
        let dataBytes = geometry.groupCount * scheme.bytesPerGroup
        stepsOffset = (dataBytes + 63) & ~63
        minsOffset = stepsOffset + ((geometry.groupCount * 2 + 63) & ~63)
        byteCount = minsOffset + geometry.groupCount * 2
    }

    /// Whether groups of 4 or 8 bits run along rows, each a whole group (a multiple of 16 values
    /// dividing the row): the layout the C row kernels take (`strata_dequantize_rows`,
    /// `strata_quantized_dot_row`).
    public var hasWholeRowGroups: Bool {
        geometry.inner == 1 && (scheme.bits == 4 || scheme.bits == 8) && scheme.groupSize % 16 == 0
            && geometry.extent % scheme.groupSize == 0
    }

    /// The layout of `q`'s parts, checked against their sizes.
    public init(of q: QuantizedTensor) {
        self.init(scheme: q.scheme, shape: q.shape)
        precondition(q.data.count == geometry.groupCount * q.scheme.bytesPerGroup && q.steps.count == geometry.groupCount
                     && q.mins.count == geometry.groupCount, "quantized tensor parts do not match shape \(q.shape) at \(q.scheme)")
    }

    /// The layout of groups `groups` of this one, read from a buffer that starts at the first of
    /// their codes (a view of some rows of a cache tensor): steps and minimums sit at the same
    /// places as before, now counted from the view's start.
    func slice(groups: Range<Int>, shape: [Int]) -> QuantizedLayout {
        let start = groups.lowerBound * scheme.bytesPerGroup
        return QuantizedLayout(scheme: scheme, geometry: scheme.geometry(shape), stepsOffset: stepsOffset + groups.lowerBound * 2 - start,
                               minsOffset: minsOffset + groups.lowerBound * 2 - start, byteCount: minsOffset + groups.upperBound * 2 - start)
    }

    private init(scheme: QuantizationScheme, geometry: GroupGeometry, stepsOffset: Int, minsOffset: Int, byteCount: Int) {
        self.scheme = scheme; self.geometry = geometry; self.stepsOffset = stepsOffset; self.minsOffset = minsOffset; self.byteCount = byteCount
    }
}

/// A weight [n, k] laid out as the k x n matrix in the panels oneDNN's matrix-unit kernels
/// read: 64-column panels, one after another; in each, blocks of k; in each block, 16 rows of
/// k words, each row all 64 columns of one word. A word is the run of consecutive k one
/// dot-product instruction takes: 2 bf16 (tag BA16a64b2a, AMX-BF16 and AVX512-BF16) or 4 int8
/// (BA16a64b4a, AMX-INT8). k and n are zero-padded to whole blocks. Packed once at load, the
/// kernels skip the per-call repacking a row-major weight costs them (~30% of their time).
public struct PanelLayout: Sendable, Equatable {
    public enum Element: Sendable, Equatable {
        case bf16, int8
        /// Consecutive k values per word.
        var word: Int { self == .bf16 ? 2 : 4 }
        var bytes: Int { self == .bf16 ? 2 : 1 }
    }

    public static let panelWidth = 64
    public let n: Int
    public let k: Int
    public let element: Element

    public init(n: Int, k: Int, element: Element = .bf16) { self.n = n; self.k = k; self.element = element }

    /// k values per block: 16 words.
    public var blockDepth: Int { 16 * element.word }
    public var panels: Int { (n + Self.panelWidth - 1) / Self.panelWidth }
    public var blocks: Int { (k + blockDepth - 1) / blockDepth }
    /// Elements of one 64-column panel (all of k, padded).
    public var panelElements: Int { blocks * blockDepth * Self.panelWidth }
    public var byteCount: Int { panels * panelElements * element.bytes }

    /// Element index of weight[row, column] (row < n, column < k).
    @inline(__always) public func index(row: Int, column: Int) -> Int {
        let word = element.word, depth = 16 * word
        let within = column % depth
        return (row / Self.panelWidth) * panelElements + (column / depth) * (depth * Self.panelWidth)
            + (within / word) * (word * Self.panelWidth) + (row % Self.panelWidth) * word + within % word
    }
}

/// A weight [n, k] held as symmetric int8 per output row (`--weight-format int8`): row r is
/// codes[r, :] * scale[r], codes in -127...127. The codes come first, in `panels` (int8 words)
/// where oneDNN's AMX-INT8 kernels serve, else row-major; the f32 scales follow at `scalesOffset`.
public struct Int8Layout: Sendable, Equatable {
    public let n: Int
    public let k: Int
    public let panels: PanelLayout?
    public let scalesOffset: Int

    public init(n: Int, k: Int, packed: Bool) {
        self.n = n
        self.k = k
        panels = packed ? PanelLayout(n: n, k: k, element: .int8) : nil
        scalesOffset = ((panels?.byteCount ?? n * k) + 63) & ~63
    }

    public var byteCount: Int { scalesOffset + n * 4 }

    /// Byte offset of code [row, column].
    @inline(__always) public func index(row: Int, column: Int) -> Int {
        panels?.index(row: row, column: column) ?? row * k + column
    }
}

/// A tensor handle: shape, element type and the backend buffer holding it. Row-major.
/// A quantized tensor has dtype `.u8` and a `quantization` layout; `shape` is the logical one.
/// A panel-packed bf16 weight has dtype `.bf16` and a `panels` layout; an int8 weight dtype
/// `.u8` and an `int8` layout.
public struct Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let dtype: DType
    public let buffer: DeviceBuffer
    public let quantization: QuantizedLayout?
    public let panels: PanelLayout?
    public let int8: Int8Layout?

    public init(shape: [Int], dtype: DType, buffer: DeviceBuffer, quantization: QuantizedLayout? = nil, panels: PanelLayout? = nil,
                int8: Int8Layout? = nil) {
        self.panels = panels
        self.int8 = int8
        self.shape = shape
        self.dtype = dtype
        self.buffer = buffer
        self.quantization = quantization
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var rows: Int { shape.count >= 2 ? shape.dropLast().reduce(1, *) : 1 }
    public var columns: Int { shape.last ?? 1 }
    /// Bytes this tensor occupies (packed size for quantized tensors).
    public var byteCount: Int { quantization?.byteCount ?? int8?.byteCount ?? panels?.byteCount ?? elementCount * dtype.byteSize }

    /// f32 element pointer; only for backends whose buffers are host memory.
    @inline(__always) public var floats: UnsafeMutablePointer<Float> {
        buffer.pointer.assumingMemoryBound(to: Float.self)
    }
}
