/// Every user-facing failure in Strata. Each case names the file, field or request at fault so
/// that a bad checkpoint or input line is reported, never crashed on.
public enum StrataError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A file or directory that is missing or unreadable.
    case fileNotFound(path: String)
    /// A file whose contents are malformed; `detail` says which field or tensor.
    case invalidFile(path: String, detail: String)
    /// A model architecture Strata does not implement.
    case unsupportedArchitecture(modelType: String, supported: [String])
    /// A request (prompt, CLI option, input line) that cannot be served.
    case invalidRequest(String)
    /// A failure writing output.
    case ioFailure(path: String, detail: String)

    public var description: String {
        switch self {
        case .fileNotFound(let path):
            return "\(path): no such file or directory"
        case .invalidFile(let path, let detail):
            return "\(path): \(detail)"
        case .unsupportedArchitecture(let modelType, let supported):
            return "unsupported model_type '\(modelType)'; supported: \(supported.joined(separator: ", "))"
        case .invalidRequest(let detail):
            return detail
        case .ioFailure(let path, let detail):
            return "\(path): \(detail)"
        }
    }
}
