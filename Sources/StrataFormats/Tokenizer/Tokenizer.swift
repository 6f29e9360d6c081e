import StrataCore
import Synchronization

/// A Hugging Face tokenizer: added-token splitting, normalizers, pre-tokenizers, BPE,
/// post-processor (BOS/EOS) and decoders, loaded from `tokenizer.json` or from GPT-2 style
/// `vocab.json` + `merges.txt`.
public final class Tokenizer: Sendable {
    let model: BPEModel
    let idToToken: [String]
    let addedTokens: [AddedToken]
    let normalizers: [Normalizer]
    let preTokenizers: [PreTokenizerStep]
    let decoders: [DecoderStep]
    /// Whether BPE input symbols are GPT-2 byte-level characters (else Unicode scalars).
    let byteLevelInput: Bool
    let prefixIds: [Int]
    let suffixIds: [Int]
    let specialIds: Set<Int>
    /// byte -> id of its byte-level character
    private let byteIds: [Int?]
    /// Addressed from the first byte of each added token, longest content first.
    private let addedByFirstByte: [UInt8: [AddedToken]]
    private let wordCache = Mutex<[String: [Int]]>([:])

    public let bosTokenId: Int?
    public let eosTokenId: Int?
    public let padTokenId: Int?
    public var vocabularySize: Int { idToToken.count }

    init(model: BPEModel, addedTokens: [AddedToken], normalizers: [Normalizer], preTokenizers: [PreTokenizerStep],
         decoders: [DecoderStep], byteLevelInput: Bool, prefixIds: [Int], suffixIds: [Int],
         bos: Int?, eos: Int?, pad: Int?) {
        self.model = model
        var table = [String](repeating: "", count: (model.vocab.values.max() ?? -1) + 1)
        for (token, id) in model.vocab { table[id] = token }
        for t in addedTokens {
            if t.id >= table.count { table += Array(repeating: "", count: t.id - table.count + 1) }
            table[t.id] = t.content
        }
        idToToken = table
        self.addedTokens = addedTokens
        self.normalizers = normalizers
        self.preTokenizers = preTokenizers
        self.decoders = decoders
        self.byteLevelInput = byteLevelInput
        self.prefixIds = prefixIds
        self.suffixIds = suffixIds
        specialIds = Set(addedTokens.filter(\.special).map(\.id))
        byteIds = (0..<256).map { model.vocab[ByteLevel.byteToString[$0]] }
        var byFirst: [UInt8: [AddedToken]] = [:]
        for t in addedTokens where !t.bytes.isEmpty { byFirst[t.bytes[0], default: []].append(t) }
        addedByFirstByte = byFirst.mapValues { $0.sorted { $0.bytes.count > $1.bytes.count } }
        bosTokenId = bos
        eosTokenId = eos
        padTokenId = pad
    }

    // MARK: Encoding

    /// Token ids of `text`; with `addSpecialTokens` the post-processor's BOS/EOS are added.
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var ids: [Int] = []
        if addSpecialTokens { ids += prefixIds }
        let bytes = Array(text.utf8)
        for segment in splitAddedTokens(bytes) {
            switch segment {
            case .added(let id): ids.append(id)
            case .text(let range, let first):
                encodeSegment(String(decoding: bytes[range], as: UTF8.self), first: first, into: &ids)
            }
        }
        if addSpecialTokens { ids += suffixIds }
        return ids
    }

    private enum Segment { case text(Range<Int>, first: Bool), added(Int) }

    /// Splits raw text on added tokens (leftmost, longest), honouring lstrip/rstrip/single_word.
    private func splitAddedTokens(_ b: [UInt8]) -> [Segment] {
        if addedByFirstByte.isEmpty { return b.isEmpty ? [] : [.text(0..<b.count, first: true)] }
        var out: [Segment] = []
        var textStart = 0
        var i = 0
        func isSpace(_ c: UInt8) -> Bool { c == 0x20 || (c >= 0x09 && c <= 0x0D) }
        func isWordByte(_ c: UInt8) -> Bool { c >= 0x80 || (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == 0x5F }
        while i < b.count {
            var matched: AddedToken?
            if let candidates = addedByFirstByte[b[i]] {
                for t in candidates {
                    let c = t.bytes
                    guard i + c.count <= b.count, b[i..<(i + c.count)].elementsEqual(c) else { continue }
                    if t.singleWord {
                        if i > 0 && isWordByte(b[i - 1]) { continue }
                        if i + c.count < b.count && isWordByte(b[i + c.count]) { continue }
                    }
                    matched = t
                    break
                }
            }
            guard let token = matched else { i += 1; continue }
            var textEnd = i
            if token.lstrip { while textEnd > textStart && isSpace(b[textEnd - 1]) { textEnd -= 1 } }
            if textEnd > textStart { out.append(.text(textStart..<textEnd, first: textStart == 0)) }
            out.append(.added(token.id))
            i += token.bytes.count
            if token.rstrip { while i < b.count && isSpace(b[i]) { i += 1 } }
            textStart = i
        }
        if textStart < b.count { out.append(.text(textStart..<b.count, first: textStart == 0)) }
        return out
    }

    private func encodeSegment(_ text: String, first: Bool, into ids: inout [Int]) {
        var normalized = text
        for n in normalizers { normalized = n.apply(normalized) }
        var pieces = [normalized]
        for step in preTokenizers { pieces = step.apply(pieces, first: first) }
        for piece in pieces where !piece.isEmpty {
            if let cached = wordCache.withLock({ $0[piece] }) { ids += cached; continue }
            let encoded = encodeWord(piece)
            if piece.utf8.count < 256 {
                wordCache.withLock { cache in
                    if cache.count > 100_000 { cache.removeAll(keepingCapacity: true) }
                    cache[piece] = encoded
                }
            }
            ids += encoded
        }
    }

    private func encodeWord(_ piece: String) -> [Int] {
        if byteLevelInput {
            if model.ignoreMerges, let id = model.vocab[ByteLevel.encode(piece.utf8)] { return [id] }
            var initial: [Int] = []
            initial.reserveCapacity(piece.utf8.count)
            var complete = true
            for b in piece.utf8 {
                guard let id = byteIds[Int(b)] else { complete = false; break }
                initial.append(id)
            }
            if complete { return model.merge(initial) }
            // The alphabet is incomplete: fall back to symbol lookup (unknown token handling).
            let symbols = piece.utf8.map { Substring(ByteLevel.byteToString[Int($0)]) }
            return model.encode(symbols: symbols, word: ByteLevel.encode(piece.utf8))
        }
        let symbols = piece.unicodeScalars.map { Substring(String($0)) }
        return model.encode(symbols: symbols, word: piece)
    }

    // MARK: Decoding

    /// Text of `ids`; special tokens are dropped when `skipSpecialTokens`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            if skipSpecialTokens && specialIds.contains(id) { continue }
            guard id >= 0 && id < idToToken.count else { continue }
            tokens.append(idToToken[id])
        }
        for d in decoders { tokens = d.apply(tokens) }
        return tokens.joined()
    }

    /// The token string for an id (as stored in the vocabulary).
    public func token(for id: Int) -> String? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    /// The id of an exact token string.
    public func id(for token: String) -> Int? {
        if let t = addedTokens.first(where: { $0.content == token }) { return t.id }
        return model.vocab[token]
    }
}
