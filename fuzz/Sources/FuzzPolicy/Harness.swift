import FuzzSupport
import StrataCore
import StrataRuntime

/// An offloading policy file and a precision map (the input split at its first NUL byte).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPolicy(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let dir = Fuzz.directory("policy")
    let (policy, map) = Fuzz.split(Fuzz.input(data, size))
    Fuzz.write(policy, to: dir + "/policy.json")
    Fuzz.write(map, to: dir + "/precision.json")
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
