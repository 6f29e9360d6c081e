import FuzzSupport
import StrataFormats

/// A GGUF file: header, metadata mapped to config/tokenizer JSON, every tensor decoded.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGGUF(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = Fuzz.directory("gguf") + "/model.gguf"
    Fuzz.write(Fuzz.input(data, size), to: path)
    Fuzz.refusalNames([path]) {
        // Not GGUFModel.open: its per-path cache would keep the first input forever.
        let model = try GGUFModel(file: GGUFFile(path: path))
        _ = try ModelConfig(json: model.companion("config.json"), path: path)
        let tokenizer = try Tokenizer.load(tokenizerJSON: model.companion("tokenizer.json"), path: path,
                                           config: TokenizerConfig(json: model.companion("tokenizer_config.json"), path: path))
        Fuzz.checkRoundTrip(tokenizer, "Hello world! 123 ÄÖ 日本 \n\t x")
        let checkpoint = GGUFCheckpoint(model: model)
        for name in checkpoint.tensorNames {
            guard let shape = checkpoint.shapeAndType(name)?.shape, shape.reduce(1, *) <= 1 << 20 else { continue }
            _ = checkpoint.tensor(name)?.floats()
        }
    }
    return 0
}
