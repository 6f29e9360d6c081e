import StrataCore

/// Byte-pair encoding with ranked merges, run with a priority queue so a long unsplit input
/// (SentencePiece-style tokenizers pass the whole text as one word) stays O(n log n).
final class BPEModel: @unchecked Sendable {
    let vocab: [String: Int]
    /// (left id << 32 | right id) -> (rank << 32 | merged id)
    private let merges: [UInt64: UInt64]
    /// Look up whole words in the vocabulary before merging (Llama 3's `ignore_merges`).
    let ignoreMerges: Bool
    let byteFallback: Bool
    let unkId: Int?
    let fuseUnk: Bool
    /// `<0xNN>` ids for byte fallback.
    private var byteTokenIds: [Int?] = Array(repeating: nil, count: 256)

    init(vocab: [String: Int], merges: [(String, String)], ignoreMerges: Bool, byteFallback: Bool,
         unkToken: String?, fuseUnk: Bool, source: String) throws {
        self.vocab = vocab
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let ia = vocab[a], let ib = vocab[b] else {
                throw StrataError.invalidFile(path: source, detail: "merge #\(rank) '\(a) \(b)' uses a token missing from the vocabulary")
            }
            guard let merged = vocab[a + b] else {
                throw StrataError.invalidFile(path: source, detail: "merge #\(rank) '\(a) \(b)' produces '\(a + b)', missing from the vocabulary")
            }
            let key = UInt64(ia) << 32 | UInt64(ib)
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(merged) }
        }
        self.merges = table
        self.ignoreMerges = ignoreMerges
        self.byteFallback = byteFallback
        self.unkId = unkToken.flatMap { vocab[$0] }
        self.fuseUnk = fuseUnk
        for b in 0..<256 {
            byteTokenIds[b] = vocab[String(format2Hex: UInt8(b))]
        }
    }

    /// Encodes one word given as initial symbol strings (byte-level characters or Unicode
    /// scalars). Unknown symbols fall back to `<0xNN>` byte tokens or the unknown token.
    func encode(symbols: [Substring], word: String) -> [Int] {
        if ignoreMerges, let id = vocab[word] { return [id] }
        var ids: [Int] = []
        ids.reserveCapacity(symbols.count)
        var lastWasUnk = false
        for s in symbols {
            if let id = vocab[String(s)] { ids.append(id); lastWasUnk = false; continue }
            if byteFallback, s.utf8.allSatisfy({ byteTokenIds[Int($0)] != nil }) {
                for b in s.utf8 { ids.append(byteTokenIds[Int(b)]!) }
                lastWasUnk = false
                continue
            }
            if let unk = unkId {
                if !(fuseUnk && lastWasUnk) { ids.append(unk) }
                lastWasUnk = true
            }
        }
        return merge(ids)
    }

    /// Applies merges to initial ids, lowest rank first, leftmost first among equal ranks.
    func merge(_ initial: [Int]) -> [Int] {
        let n = initial.count
        if n < 2 { return initial }
        var ids = initial
        var prev = [Int](0..<n).map { $0 - 1 }
        var next = [Int](0..<n).map { $0 + 1 }
        next[n - 1] = -1
        var alive = [Bool](repeating: true, count: n)
        var heap = MinHeap()
        for i in 0..<(n - 1) {
            if let m = merges[UInt64(ids[i]) << 32 | UInt64(ids[i + 1])] {
                heap.push(rank: m >> 32, position: i, merged: UInt32(truncatingIfNeeded: m))
            }
        }
        while let top = heap.pop() {
            let pos = top.position
            guard alive[pos], next[pos] >= 0 else { continue }
            let right = next[pos]
            guard let m = merges[UInt64(ids[pos]) << 32 | UInt64(ids[right])],
                  m >> 32 == top.rank, UInt32(truncatingIfNeeded: m) == top.merged else { continue }
            ids[pos] = Int(top.merged)
            alive[right] = false
            next[pos] = next[right]
            if next[right] >= 0 { prev[next[right]] = pos }
            if prev[pos] >= 0, let m = merges[UInt64(ids[prev[pos]]) << 32 | UInt64(ids[pos])] {
                heap.push(rank: m >> 32, position: prev[pos], merged: UInt32(truncatingIfNeeded: m))
            }
            if next[pos] >= 0, let m = merges[UInt64(ids[pos]) << 32 | UInt64(ids[next[pos]])] {
                heap.push(rank: m >> 32, position: pos, merged: UInt32(truncatingIfNeeded: m))
            }
        }
        var out: [Int] = []
        out.reserveCapacity(n)
        var i = 0
        while i >= 0 { out.append(ids[i]); i = next[i] }
        return out
    }
}

/// Binary min-heap ordered by (rank, position).
struct MinHeap {
    struct Item { var rank: UInt64; var position: Int; var merged: UInt32 }
    private var items: [Item] = []

    @inline(__always) private static func less(_ a: Item, _ b: Item) -> Bool {
        a.rank != b.rank ? a.rank < b.rank : a.position < b.position
    }

    mutating func push(rank: UInt64, position: Int, merged: UInt32) {
        items.append(Item(rank: rank, position: position, merged: merged))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.less(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Item? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var smallest = i
                if l < items.count && Self.less(items[l], items[smallest]) { smallest = l }
                if r < items.count && Self.less(items[r], items[smallest]) { smallest = r }
                if smallest == i { break }
                items.swapAt(i, smallest)
                i = smallest
            }
        }
        return top
    }
}

extension String {
    /// `<0xNN>`, the SentencePiece byte-fallback token for `byte`.
    init(format2Hex byte: UInt8) {
        let digits = Array("0123456789ABCDEF")
        self = "<0x" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0xF)]) + ">"
    }
}
