import ArgumentParser
import StrataCore
import StrataFormats
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `strata bench-tokenizer`: encoding speed on a text file, one core.
struct BenchTokenizer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-tokenizer", abstract: "Measure tokenizer encoding speed (MB/s) on a text file, one core.")

    @Option(help: "Model or tokenizer directory.") var model: String
    @Option(help: "UTF-8 text file to encode.") var text: String
    @Option(help: "Measured passes; the median is reported.") var `repeat`: Int = 3
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        try reportingErrors {
            let tokenizer = try Tokenizer.load(directory: model)
            guard let data = FileManager.default.contents(atPath: text) else { throw StrataError.fileNotFound(path: text) }
            // Line by line, as a batch job feeds prompts; a fresh tokenizer per pass would hide
            // nothing, since the word cache is part of the real encoder.
            let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var rates: [Double] = []
            var tokens = 0
            for _ in 0..<max(1, `repeat`) {
                let start = Clock.now()
                tokens = 0
                for line in lines { tokens += tokenizer.encode(line, addSpecialTokens: false).count }
                rates.append(Double(data.count) / 1e6 / (Clock.now() - start))
            }
            let median = rates.sorted()[rates.count / 2]
            if json {
                print(JSONValue.object(["megabytes_per_s": .number(median), "bytes": .number(Double(data.count)),
                                        "tokens": .number(Double(tokens))]).serialized())
            } else {
                print("\(data.count) bytes -> \(tokens) tokens: \(median.formatted(2)) MB/s (median of \(rates.count))")
            }
        }
    }
}
