import StrataCore
import StrataFormats
import Testing

/// The Jinja subset against jinja2 (as transformers' apply_chat_template configures it) on the
/// real chat templates of Llama-2, Llama-3, Mistral, Qwen2, Qwen2.5 (with tools), Zephyr and
/// SmolLM2, plus a template that exercises the rest of the subset: the same text for every
/// conversation, and an error wherever jinja2 raised.
@Suite struct ChatTemplateTests {
    static let directory = Fixtures.root + "/chat_templates"

    @Test func rendersLikeJinja2() throws {
        let fixture = try JSONValue.load(path: Self.directory + "/templates.json")
        let cases = try JSONValue.load(path: Self.directory + "/reference.json").array ?? []
        #expect(cases.count >= 70)
        var compiled: [String: ChatTemplate] = [:]
        for (name, source) in fixture["templates"]?.object ?? [:] { compiled[name] = try ChatTemplate(source.string!, origin: name) }
        #expect(Set(compiled.keys).isSuperset(of: ["llama-2", "llama-3", "mistral", "qwen2", "zephyr", "qwen2.5-tools", "features"]))
        for c in cases {
            let name = c["template"]!.string!, conversation = c["conversation"]!.string!
            let messages = fixture["conversations"]![conversation]!.array!
            var extra: [String: JSONValue] = [:]
            if let tools = c["tools"], !tools.isNull { extra["tools"] = tools }
            let label = "\(name) on \(conversation), add_generation_prompt \(c["add_generation_prompt"]!)"
            do {
                let text = try compiled[name]!.render(messages: messages, addGenerationPrompt: c["add_generation_prompt"]?.bool ?? true,
                                                      bosToken: "<s>", eosToken: "</s>", extra: extra)
                #expect(text == c["text"]?.string, "\(label)")
            } catch {
                #expect(c["error"]?.string != nil, "\(label): \(error)")
                if let message = c["error"]?.string { #expect("\(error)".contains(message), "\(label)") }
            }
        }
    }

    @Test func syntaxErrorsNameTheOrigin() throws {
        #expect(throws: StrataError.self) { _ = try ChatTemplate("{% if x %}never closed", origin: "tokenizer_config.json") }
        do { _ = try ChatTemplate("{{ 'a' ", origin: "tokenizer_config.json") } catch {
            #expect("\(error)".hasPrefix("tokenizer_config.json: chat_template does not parse"))
        }
        let t = try ChatTemplate("{{ messages[0].content | nosuchfilter }}")
        #expect(throws: StrataError.invalidRequest("chat template: filter 'nosuchfilter' is not supported")) {
            _ = try t.render(messages: [.object(["role": .string("user"), "content": .string("x")])])
        }
        #expect(throws: StrataError.self) { _ = try t.render(messages: [.object(["content": .string("x")])]) }
        // A template cannot run forever.
        let loop = try ChatTemplate("{% for i in range(2000) %}{% for j in range(2000) %}x{% endfor %}{% endfor %}")
        #expect(throws: StrataError.self) { _ = try loop.render(messages: []) }
    }
}
