import FuzzSupport
import StrataFormats

/// One input as config.json, generation_config.json and tokenizer_config.json (each parsed on
/// its own), and the chat template the last may carry.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfigs(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let dir = Fuzz.directory("configs")
    let bytes = Fuzz.input(data, size)
    for name in ["config.json", "generation_config.json", "tokenizer_config.json"] { Fuzz.write(bytes, to: dir + "/" + name) }
    Fuzz.refusalNames([dir + "/config.json"]) { _ = try ModelConfig(directory: dir) }
    Fuzz.refusalNames([dir + "/generation_config.json"]) { _ = try GenerationConfig(directory: dir) }
    Fuzz.refusalNames([dir + "/tokenizer_config.json", "chat template"]) {
        let config = try TokenizerConfig(directory: dir)
        if let source = config.chatTemplate {
            let template = try ChatTemplate(source, origin: "chat template")
            _ = try template.render(messages: [.object(["role": .string("user"), "content": .string("hi")])],
                                    bosToken: config.bosToken, eosToken: config.eosToken)
        }
    }
    return 0
}
