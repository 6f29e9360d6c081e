import FuzzSupport
import StrataFormats

/// Arbitrary bytes as text through each fixture tokenizer (the first byte picks which): every
/// id in range, and byte-level BPE gives the text back exactly.
let tokenizers: [(Tokenizer, lossless: Bool)] = [
    (try! Tokenizer.load(directory: Fuzz.fixture("fixtures/tokenizers/gpt2-bpe")), true),
    (try! Tokenizer.load(directory: Fuzz.fixture("fixtures/tokenizers/gpt2-files")), true),
    (try! Tokenizer.load(directory: Fuzz.fixture("fixtures/tokenizers/llama3-bpe")), true),
    (try! Tokenizer.load(directory: Fuzz.fixture("fixtures/tokenizers/metaspace-bpe")), false),
    (try! Tokenizer.load(directory: Fuzz.fixture("fixtures/tokenizers/sentencepiece-bpe")), false),
    (try! Tokenizer.load(directory: Fuzz.fixture("fixtures/models/gguf-spm/model.gguf")), false),
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizerText(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = Fuzz.input(data, size)
    guard let first = bytes.first else { return 0 }
    let (tokenizer, lossless) = tokenizers[Int(first) % tokenizers.count]
    let text = String(decoding: bytes.dropFirst(), as: UTF8.self)
    let ids = tokenizer.encode(text, addSpecialTokens: true)
    if let bad = ids.first(where: { $0 < 0 || $0 >= tokenizer.vocabularySize }) { fatalError("id \(bad) out of range") }
    let plain = tokenizer.encode(text, addSpecialTokens: false)
    let back = tokenizer.decode(plain, skipSpecialTokens: false)
    if lossless && back != text { fatalError("round trip changed \(Array(text.utf8)) into \(Array(back.utf8))") }
    return 0
}
