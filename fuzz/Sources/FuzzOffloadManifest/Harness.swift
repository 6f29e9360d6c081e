import FuzzSupport
import Glibc
import StrataFormats

/// An offload store's manifest over a real 4096-byte tensor file; every listed tensor is read.
let store: String = {
    let dir = Fuzz.directory("store")
    mkdir(dir + "/tensors", 0o755)
    Fuzz.write([UInt8](repeating: 0x3c, count: 4096), to: dir + "/tensors/0.bin")
    return dir
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOffloadManifest(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = store + "/" + OffloadStore.manifestName
    Fuzz.write(Fuzz.input(data, size), to: path)
    Fuzz.refusalNames([store]) {
        let s = try OffloadStore(directory: store)
        for name in s.tensorNames { _ = try s.require(name).floats() }
        try s.verify()
    }
    return 0
}
