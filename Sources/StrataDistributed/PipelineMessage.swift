import StrataCore

/// What travels between pipeline stages. Down the chain (rank r to r + 1, in order): a batch's
/// header, each micro-batch's hidden states, the batch's end, the job's end. Back along the
/// ring (last rank to rank 0): each micro-batch's sampled tokens, then the batch's results.
enum PipelineMessage: Equatable {
    case batchStart(BatchHeader)
    case work(Work)
    case batchEnd
    case shutdown
    case tokens(Tokens)
    case results([RowResult])
    case timeline([StageSpan])

    /// Message tags: the chain and the ring must not overtake each other's FIFO order.
    static let chainTag = 1, ringTag = 2, timelineTag = 3
}

/// Per-row facts of a batch every stage needs: the left padding (attention masks, positions),
/// and for the last stage what stops each row.
struct BatchHeader: Equatable {
    var promptLength: Int
    var capacity: Int
    var padding: [Int]
    var maxNewTokens: [Int]
    var sampleIndexes: [UInt64]
    var stopStrings: [[String]]
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

/// The last stage's answer for one micro-batch: each row's new token (-1 where the row had
/// already finished) and whether the row is finished now.
struct Tokens: Equatable {
    var micro: Int
    var prefill: Bool
    var rowStart: Int
    var tokens: [Int]
    var finished: [Bool]
}

struct RowResult: Equatable {
    var tokenIds: [Int]
    var text: String
    var finishReason: String
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
            w.int(1); w.int(h.promptLength); w.int(h.capacity); w.ints(h.padding); w.ints(h.maxNewTokens)
            w.int(h.sampleIndexes.count); for s in h.sampleIndexes { w.u64(s) }
            w.int(h.stopStrings.count); for list in h.stopStrings { w.int(list.count); for s in list { w.string(s) } }
        case .work(let m):
            w.int(2); w.int(m.micro); w.int(m.prefill ? 1 : 0); w.int(m.rowStart); w.int(m.rowCount); w.int(m.length)
            w.int(m.pastLength); w.int(m.columns); w.floats(m.hidden)
        case .batchEnd: w.int(3)
        case .shutdown: w.int(4)
        case .tokens(let t):
            w.int(5); w.int(t.micro); w.int(t.prefill ? 1 : 0); w.int(t.rowStart); w.ints(t.tokens); w.ints(t.finished.map { $0 ? 1 : 0 })
        case .results(let rows):
            w.int(6); w.int(rows.count)
            for r in rows { w.ints(r.tokenIds); w.string(r.text); w.string(r.finishReason) }
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
            let promptLength = try r.int(), capacity = try r.int(), padding = try r.ints(), maxNew = try r.ints()
            let seeds = try (0..<r.count()).map { _ in try r.u64() }
            let stops = try (0..<r.count()).map { _ in try (0..<r.count()).map { _ in try r.string() } }
            return .batchStart(BatchHeader(promptLength: promptLength, capacity: capacity, padding: padding, maxNewTokens: maxNew,
                                           sampleIndexes: seeds, stopStrings: stops))
        case 2:
            return .work(Work(micro: try r.int(), prefill: try r.int() != 0, rowStart: try r.int(), rowCount: try r.int(),
                              length: try r.int(), pastLength: try r.int(), columns: try r.int(), hidden: try r.floats()))
        case 3: return .batchEnd
        case 4: return .shutdown
        case 5:
            return .tokens(Tokens(micro: try r.int(), prefill: try r.int() != 0, rowStart: try r.int(), tokens: try r.ints(),
                                  finished: try r.ints().map { $0 != 0 }))
        case 6:
            return .results(try (0..<r.count()).map { _ in
                RowResult(tokenIds: try r.ints(), text: try r.string(), finishReason: try r.string())
            })
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
    mutating func string(_ s: String) { let u = Array(s.utf8); int(u.count); bytes.append(contentsOf: u) }
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
    mutating func string() throws -> String {
        let n = try count()
        return String(decoding: try take(n), as: UTF8.self)
    }
}
