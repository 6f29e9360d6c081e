import FuzzSupport
import StrataFormats

/// `model.safetensors.index.json` naming tensors in a real shard that sits beside it.
let directory: String = {
    let dir = Fuzz.directory("index")
    try! SafeTensorsWriter.write([.init(name: "a.weight", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6]),
                                  .init(name: "b.bias", shape: [3], floats: [7, 8, 9])],
                                 to: dir + "/model-00001-of-00001.safetensors")
    return dir
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensorsIndex(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = directory + "/model.safetensors.index.json"
    Fuzz.write(Fuzz.input(data, size), to: path)
    Fuzz.refusalNames([path, directory]) {
        let checkpoint = try Checkpoint(directory: directory)
        for name in checkpoint.tensorNames { _ = checkpoint.tensor(name)?.floats() }
    }
    return 0
}
