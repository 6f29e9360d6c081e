import StrataCore

/// A model's chat template (`chat_template` in tokenizer_config.json, `tokenizer.chat_template`
/// in GGUF), rendered as Hugging Face's `apply_chat_template` does: jinja2 with `trim_blocks`
/// and `lstrip_blocks`, `raise_exception`, `bos_token`/`eos_token` and `add_generation_prompt`.
/// No package on the mirror renders these, so Strata carries the Jinja subset they use.
public struct ChatTemplate: Sendable {
    public let source: String
    /// Where the template came from (a file), named in render errors too.
    public let origin: String
    let nodes: [JinjaNode]

    /// Parses `source`; a syntax error names `origin` (the file the template came from).
    public init(_ source: String, origin: String = "chat template") throws {
        let parsed: [JinjaNode]
        do { parsed = try JinjaParser.parse(source) } catch {
            throw StrataError.invalidFile(path: origin, detail: "chat_template does not parse: \(error)")
        }
        self.source = source
        self.origin = origin
        nodes = parsed
    }

    /// Renders `messages` (each an object with `role` and `content`). `extra` adds variables
    /// (e.g. `tools`, `date_string`).
    public func render(messages: [JSONValue], addGenerationPrompt: Bool = true, bosToken: String? = nil, eosToken: String? = nil,
                       extra: [String: JSONValue] = [:]) throws -> String {
        for (i, m) in messages.enumerated() {
            guard m["role"]?.string != nil, m["content"] != nil else {
                throw StrataError.invalidRequest("messages[\(i)] needs a string 'role' and a 'content'")
            }
        }
        var globals: [String: JinjaValue] = [
            "messages": .list(messages.map(Self.message)),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "bos_token": .string(bosToken ?? ""), "eos_token": .string(eosToken ?? ""),
        ]
        for (k, v) in extra { globals[k] = JinjaValue(json: v) }
        var renderer = JinjaRenderer(globals: globals)
        var out = ""
        let prefix = origin == "chat template" ? "chat template: " : "chat template (\(origin)): "
        do { try renderer.render(nodes, into: &out) } catch let e as JinjaRenderError {
            throw StrataError.invalidRequest(prefix + e.message)
        } catch is JinjaRenderer.Flow {
            throw StrataError.invalidRequest(prefix + "'break' or 'continue' outside a loop")
        }
        return out
    }

    /// A message with `role` and `content` first, in that order, as templates that print a
    /// message (or iterate its keys) expect.
    static func message(_ m: JSONValue) -> JinjaValue {
        guard case .object(let o) = m else { return JinjaValue(json: m) }
        var d = JinjaDict()
        for key in ["role", "content"] where o[key] != nil { d[key] = JinjaValue(json: o[key]!) }
        for key in o.keys.sorted() where key != "role" && key != "content" { d[key] = JinjaValue(json: o[key]!) }
        return .dict(d)
    }
}
