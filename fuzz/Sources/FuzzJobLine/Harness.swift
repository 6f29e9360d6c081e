import FuzzSupport
import StrataCore
import StrataFormats
import StrataRuntime
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A JSONL job line through the same parsing `strata generate --input` does, with a real
/// tokenizer and chat template (a model's weights are not needed to make the request).
struct Encoder: PromptEncoder {
    let tokenizer = try! Tokenizer.load(directory: Fuzz.fixture("fixtures/tokenizers/llama3-bpe"))
    let template = try! ChatTemplate(
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

    func encodePrompt(_ prompt: String, addSpecialTokens: Bool) throws -> [Int] {
        guard !prompt.isEmpty else { throw StrataError.invalidRequest("prompt is empty") }
        return tokenizer.encode(prompt, addSpecialTokens: addSpecialTokens)
    }

    func encodeChat(_ messages: [JSONValue]) throws -> (prompt: String, ids: [Int]) {
        let prompt = try template.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>")
        return (prompt, try encodePrompt(prompt, addSpecialTokens: false))
    }
}

let encoder = Encoder()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJobLine(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let raw = Fuzz.input(data, size)
    do {
        let item = try BatchJob.item(raw, index: 1, origin: "in.jsonl:1", encoder: encoder)
        var fields = item.fields
        fields["token_ids"] = .array(item.ids.map { .number(Double($0)) })
        // The output line must parse back to what was written.
        let line = JSONValue.object(fields).serialized()
        guard let back = try? JSONValue.parse(Data(line.utf8), path: "out"), back == .object(fields) else {
            fatalError("output line does not parse back: \(line)")
        }
    } catch is StrataError {
    } catch {
        fatalError("not a StrataError: \(error)")
    }
    return 0
}
