import StrataCore

enum RuntimeError {
    static func request(_ detail: String) -> StrataError { .invalidRequest(detail) }
}
