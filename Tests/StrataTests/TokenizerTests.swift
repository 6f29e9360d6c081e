import StrataCore
import StrataFormats
import Testing

/// Token ids equal Hugging Face `tokenizers` on the tricky strings of every tokenizer kind
/// (GPT-2 byte-level, its vocab.json + merges.txt form, Llama-3 regex byte-level,
/// SentencePiece-style BPE with byte fallback in both the normalizer and Metaspace layouts).
@Suite struct TokenizerTests {
    struct Case { let text: String; let ids: [Int]; let decoded: String }

    static func cases(_ name: String) throws -> [Case] {
        let j = try JSONValue.load(path: Fixtures.tokenizer(name) + "/reference_ids.json")
        return (j.array ?? []).map {
            Case(text: $0["text"]!.string!, ids: ($0["ids"]!.array ?? []).compactMap(\.int), decoded: $0["decoded"]!.string!)
        }
    }

    @Test(arguments: Fixtures.tokenizerNames)
    func idsMatchHuggingFace(tokenizer name: String) throws {
        let tokenizer = try Tokenizer.load(directory: Fixtures.tokenizer(name))
        let cases = try Self.cases(name)
        #expect(cases.count >= 30)
        for c in cases {
            #expect(tokenizer.encode(c.text) == c.ids, "\(name): \(c.text.debugDescription.prefix(80))")
        }
    }

    @Test(arguments: Fixtures.tokenizerNames)
    func decodingMatchesHuggingFace(tokenizer name: String) throws {
        let tokenizer = try Tokenizer.load(directory: Fixtures.tokenizer(name))
        for c in try Self.cases(name) {
            #expect(tokenizer.decode(c.ids) == c.decoded, "\(name): \(c.text.debugDescription.prefix(80))")
        }
    }

    @Test func byteLevelDecodingRoundTripsBytes() throws {
        let tokenizer = try Tokenizer.load(directory: Fixtures.tokenizer("gpt2-bpe"))
        for text in ["ZWJ: 👨‍👩‍👧‍👦", "\u{0}\u{1}control", "e\u{301}", "  spaces\n\ttabs ", "日本語"] {
            #expect(tokenizer.decode(tokenizer.encode(text, addSpecialTokens: false)) == text)
        }
    }

    @Test func optPrependsEndOfSequenceAsBOS() throws {
        for name in ["gpt2-bpe", "gpt2-files"] {
            let tokenizer = try Tokenizer.load(directory: Fixtures.tokenizer(name))
            #expect(tokenizer.encode("Hello").first == 2)
            #expect(tokenizer.encode("Hello", addSpecialTokens: false).first != 2)
        }
    }

    @Test func specialTokensInTextAreRecognised() throws {
        let tokenizer = try Tokenizer.load(directory: Fixtures.tokenizer("sentencepiece-bpe"))
        let ids = tokenizer.encode("a</s>b", addSpecialTokens: false)
        #expect(ids.contains(2))
        #expect(tokenizer.decode(ids, skipSpecialTokens: true).contains("</s>") == false)
    }

    @Test func missingTokenizerNamesTheFile() throws {
        let dir = Fixtures.scratch("no-tokenizer")
        #expect {
            try Tokenizer.load(directory: dir)
        } throws: { error in
            "\(error)".contains("tokenizer.json")
        }
    }
}
