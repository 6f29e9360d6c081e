import FuzzSupport
import StrataFormats

/// tokenizer.json: loading, then encoding and decoding a sample with what was loaded.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizerJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let dir = Fuzz.directory("tokenizer")
    let path = dir + "/tokenizer.json"
    Fuzz.write(Fuzz.input(data, size), to: path)
    Fuzz.refusalNames([path]) {
        let tokenizer = try Tokenizer.load(directory: dir)
        Fuzz.checkRoundTrip(tokenizer, "Hello world! 123 ÄÖ 日本 <s> \n\t x")
    }
    return 0
}
