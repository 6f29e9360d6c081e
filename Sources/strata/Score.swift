import ArgumentParser
import Foundation
import StrataCore
import StrataFormats
import StrataRuntime

struct Score: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Log-likelihood of continuations given contexts, in process (no server).",
        discussion: """
        Reads lines {"context": "...", "continuation": "..."} and prints one JSON object per line:
        {"loglikelihood", "context_tokens", "continuation_tokens"}. Text is split into tokens as
        lm-evaluation-harness splits it (trailing spaces of the context move to the
        continuation; the continuation's tokens are those of context + continuation after the
        context's; no special tokens), so the numbers compare with its scores through `serve`.
        """)

    @OptionGroup var backend: BackendOptions
    @Option(help: "JSONL input of context/continuation lines.") var input: String

    func run() throws {
        try reportingErrors {
            let bundle = try backend.loadBundle()
            let reader = try LineReader(path: input)
            while let (number, line) = try reader.next() {
                let origin = "\(input):\(number)"
                guard case .text(let raw) = line else { throw StrataError.invalidFile(path: origin, detail: "line too long") }
                if raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
                let fields = try JSONFields(try JSONValue.parse(Data(raw), path: origin), path: origin)
                var context = try fields.string("context"), continuation = try fields.string("continuation")
                let trimmed = context.reversed().prefix { $0 == " " }.count
                if trimmed > 0 { continuation = String(context.suffix(trimmed)) + continuation; context = String(context.dropLast(trimmed)) }
                let whole = bundle.tokenizer.encode(context + continuation, addSpecialTokens: false)
                let contextIds = bundle.tokenizer.encode(context, addSpecialTokens: false)
                guard !contextIds.isEmpty, whole.count > contextIds.count else {
                    throw StrataError.invalidFile(path: origin, detail: "the context and the continuation must each encode to at least one token")
                }
                let continuationIds = Array(whole[contextIds.count...])
                let score = Perplexity.loglikelihood(model: bundle.model, context: contextIds, continuation: continuationIds)
                print(JSONValue.object(["loglikelihood": .number(score), "context_tokens": .number(Double(contextIds.count)),
                                        "continuation_tokens": .number(Double(continuationIds.count))]).serialized())
            }
        }
    }
}
