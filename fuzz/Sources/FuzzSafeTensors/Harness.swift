import FuzzSupport
import StrataFormats

/// A safetensors file: header validation, then every tensor read back as f32.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = Fuzz.directory("st") + "/model.safetensors"
    Fuzz.write(Fuzz.input(data, size), to: path)
    Fuzz.refusalNames([path]) {
        let file = try SafeTensorsFile(path: path)
        for name in file.entries.keys {
            guard let view = file.tensor(name), view.elementCount <= 1 << 20 else { continue }
            _ = view.floats()
        }
    }
    return 0
}
