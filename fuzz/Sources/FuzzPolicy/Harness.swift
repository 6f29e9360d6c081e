import FuzzSupport
import StrataCore
import StrataRuntime

/// An offloading policy file and a precision map (the input split at its first NUL byte).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPolicy(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let dir = Fuzz.directory("policy")
    Fuzz.writeSplit(Fuzz.input(data, size), dir + "/policy.json", dir + "/precision.json")
    Fuzz.refusalNames([dir + "/policy.json"]) {
        let p = try Policy.load(path: dir + "/policy.json")
        _ = p.json
    }
    Fuzz.refusalNames([dir + "/precision.json"]) {
        let m = try PrecisionMap.load(path: dir + "/precision.json")
        try m.validate(layers: 12, path: dir + "/precision.json")
        _ = m.averageBits(layers: 12)
        _ = m.json.serialized()
    }
    return 0
}
