import FuzzSupport
import StrataPlanning

/// A cluster spec (YAML), as `strata cluster plan --cluster` reads it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClusterSpec(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = Fuzz.directory("cluster") + "/cluster.yaml"
    Fuzz.write(Fuzz.input(data, size), to: path)
    Fuzz.refusalNames([path]) { _ = try ClusterSpec.load(path: path) }
    return 0
}
