import StrataCore

/// What travels between pipeline stages. Down the chain (rank r to r + 1, in order): a batch's
/// header, each micro-batch's hidden states, the batch's end, the job's end. Back along the
/// ring (last rank to rank 0): each micro-batch's final hidden states at its last positions,
/// which rank 0 turns into logits and tokens.
enum PipelineMessage: Equatable {
    case batchStart(BatchHeader)
    case work(Work)
    case batchEnd
    case shutdown
    case timeline([StageSpan])

    /// Message tags: the chain and the ring must not overtake each other's FIFO order.
    static let chainTag = 1, ringTag = 2, timelineTag = 3
}

/// Per-row facts of a batch every stage needs: the cache's size and each row's left padding
/// (attention masks, positions).
struct BatchHeader: Equatable {
    var promptLength: Int
    var capacity: Int
    var padding: [Int]
    var rows: Int { padding.count }
}

/// One micro-batch's pass: rows `rowStart..<rowStart+rowCount` of the batch, `length` tokens
/// each after `pastLength` cached positions; hidden states [rowCount * length, columns].
struct Work: Equatable {
    var micro: Int
    var prefill: Bool
    var rowStart: Int
    var rowCount: Int
    var length: Int
    var pastLength: Int
    var columns: Int
    var hidden: [Float]
    var rows: Range<Int> { rowStart..<(rowStart + rowCount) }
}

/// A stage's busy interval, seconds from the job's start (after a barrier).
public struct StageSpan: Sendable, Equatable {
    public var rank: Int
    public var start: Double
    public var end: Double
    public var prefill: Bool
}

extension PipelineMessage {
    func encoded() -> [UInt8] {
        var w = MessageWriter()
        switch self {
        case .batchStart(let h):
            w.int(1); w.int(h.promptLength); w.int(h.capacity); w.ints(h.padding)
        case .work(let m):
            w.int(2); w.int(m.micro); w.int(m.prefill ? 1 : 0); w.int(m.rowStart); w.int(m.rowCount); w.int(m.length)
            w.int(m.pastLength); w.int(m.columns); w.floats(m.hidden)
        case .batchEnd: w.int(3)
        case .shutdown: w.int(4)
        case .timeline(let spans):
            w.int(7); w.int(spans.count)
            for s in spans { w.int(s.rank); w.double(s.start); w.double(s.end); w.int(s.prefill ? 1 : 0) }
        }
        return w.bytes
    }

    static func decode(_ bytes: [UInt8], from rank: Int) throws -> PipelineMessage {
        var r = MessageReader(bytes: bytes, origin: "message from rank \(rank)")
        switch try r.int() {
        case 1:
            return .batchStart(BatchHeader(promptLength: try r.int(), capacity: try r.int(), padding: try r.ints()))
        case 2:
            return .work(Work(micro: try r.int(), prefill: try r.int() != 0, rowStart: try r.int(), rowCount: try r.int(),
                              length: try r.int(), pastLength: try r.int(), columns: try r.int(), hidden: try r.floats()))
        case 3: return .batchEnd
        case 4: return .shutdown
        case 7:
            return .timeline(try (0..<r.count()).map { _ in
                StageSpan(rank: try r.int(), start: try r.double(), end: try r.double(), prefill: try r.int() != 0)
            })
        case let kind:
            throw StrataError.invalidFile(path: r.origin, detail: "unknown message kind \(kind) (ranks running different strata builds?)")
        }
    }
}

/// Little-endian fields appended to a byte array.
struct MessageWriter {
    var bytes: [UInt8] = []
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
    mutating func double(_ v: Double) { u64(v.bitPattern) }
    mutating func ints(_ v: [Int]) { int(v.count); for x in v { int(x) } }
    mutating func floats(_ v: [Float]) {
        int(v.count)
        v.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
}

/// Reads what `MessageWriter` wrote; a short or malformed message is an error, never a crash.
struct MessageReader {
    let bytes: [UInt8]
    let origin: String
    var offset = 0

    init(bytes: [UInt8], origin: String) { self.bytes = bytes; self.origin = origin }

    private mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, offset + n <= bytes.count else {
            throw StrataError.invalidFile(path: origin, detail: "message truncated at byte \(offset) (wanted \(n) more of \(bytes.count))")
        }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    mutating func u64() throws -> UInt64 {
        let s = try take(8)
        return s.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }
    mutating func int() throws -> Int { Int(Int64(bitPattern: try u64())) }
    mutating func double() throws -> Double { Double(bitPattern: try u64()) }
    /// A list length, bounded by what the message could hold.
    mutating func count() throws -> Int {
        let n = try int()
        guard n >= 0, n <= bytes.count - offset else {
            throw StrataError.invalidFile(path: origin, detail: "list of \(n) entries in a \(bytes.count)-byte message")
        }
        return n
    }
    mutating func ints() throws -> [Int] { try (0..<count()).map { _ in try int() } }
    mutating func floats() throws -> [Float] {
        let n = try count()
        let raw = try take(n * 4)
        return [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            raw.withUnsafeBytes { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
            initialized = n
        }
    }
}
