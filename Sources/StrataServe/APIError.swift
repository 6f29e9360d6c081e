import StrataCore

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with its HTTP status.
public struct APIError: Error, Sendable, Equatable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?

    public init(status: Int, _ message: String, type: String? = nil, param: String? = nil) {
        self.status = status
        self.message = message
        self.type = type ?? Self.typeName(status)
        self.param = param
    }

    /// A 400 naming the request field at fault.
    public static func invalid(_ param: String, _ message: String) -> APIError {
        APIError(status: 400, message, param: param)
    }

    public var body: JSONValue {
        .object(["error": .object(["message": .string(message), "type": .string(type), "param": param.map { .string($0) } ?? .null,
                                   "code": .number(Double(status))])])
    }

    static func typeName(_ status: Int) -> String {
        switch status {
        case 400: return "BadRequestError"
        case 404: return "NotFoundError"
        case 405: return "MethodNotAllowedError"
        case 413: return "RequestTooLargeError"
        case 503: return "ServiceUnavailableError"
        default: return status >= 500 ? "InternalServerError" : "BadRequestError"
        }
    }
}
