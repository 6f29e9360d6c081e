import FuzzSupport
import StrataCore
import StrataFormats

/// A chat template (Jinja source) rendered over a short conversation.
let messages: [JSONValue] = [
    .object(["role": .string("system"), "content": .string("Be brief.")]),
    .object(["role": .string("user"), "content": .string("Hi <b>there</b>")]),
    .object(["role": .string("assistant"), "content": .string("Hello.")]),
    .object(["role": .string("user"), "content": .string("2+2?")]),
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChatTemplate(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let source = String(decoding: UnsafeBufferPointer(start: data, count: data == nil ? 0 : size), as: UTF8.self)
    Fuzz.refusalNames(["chat template"]) {
        let template = try ChatTemplate(source, origin: "chat template")
        _ = try template.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
    }
    return 0
}
