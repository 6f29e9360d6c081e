import FuzzSupport
import StrataFormats

/// GPT-2 style vocab.json + merges.txt (the input split at its first NUL byte).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizerFiles(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let dir = Fuzz.directory("files")
    Fuzz.writeSplit(Fuzz.input(data, size), dir + "/vocab.json", dir + "/merges.txt")
    Fuzz.refusalNames([dir + "/vocab.json", dir + "/merges.txt"]) {
        let tokenizer = try Tokenizer.load(directory: dir)
        Fuzz.checkRoundTrip(tokenizer, "Hello world! 123 ÄÖ 日本 \n\t x")
    }
    return 0
}
