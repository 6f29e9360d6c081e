import Foundation
import Hummingbird
import NIOCore
import StrataCore

/// The HTTP face of `OpenAIService` (Hummingbird 2): vLLM's OpenAI-compatible routes, with
/// errors as OpenAI error objects. A bad request gets its error and touches nothing else.
public struct HTTPServer: Sendable {
    public let service: OpenAIService
    public let host: String
    public let port: Int
    /// Bodies larger than this are refused with 413.
    public let maxBodyBytes: Int

    public init(service: OpenAIService, host: String, port: Int, maxBodyBytes: Int = 32 << 20) {
        self.service = service
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
    }

    /// Serves until SIGINT/SIGTERM; `onRunning` gets the bound port (useful with port 0).
    public func run(onRunning: @escaping @Sendable (Int) -> Void) async throws {
        let app = Application(router: router(), configuration: .init(address: .hostname(host, port: port), serverName: "strata"),
                              onServerRunning: { channel in onRunning(channel.localAddress?.port ?? 0) })
        try await app.runService()
    }

    func router() -> Router<BasicRequestContext> {
        let router = Router()
        let service = self.service
        let limit = maxBodyBytes
        router.get("/health") { _, _ in Response(status: .ok) }
        router.get("/v1/models") { _, _ in json(service.models()) }
        router.get("/tokenizer_info") { _, _ in json(service.tokenizerInfo()) }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: service.scheduler.metrics.exposition())))
        }
        router.post("/tokenize") { request, _ in
            await respond(request, limit: limit) { body throws(APIError) in json(try service.tokenize(body)) }
        }
        router.post("/detokenize") { request, _ in
            await respond(request, limit: limit) { body throws(APIError) in json(try service.detokenize(body)) }
        }
        router.post("/v1/completions") { request, _ in
            service.scheduler.metrics.requests.increment()
            return await respond(request, limit: limit) { body throws(APIError) in
                if body["stream"]?.bool == true { return sse(try service.completionStream(body)) }
                return json(try await service.completions(body))
            }
        }
        router.post("/v1/chat/completions") { request, _ in
            service.scheduler.metrics.requests.increment()
            return await respond(request, limit: limit) { body throws(APIError) in
                if body["stream"]?.bool == true { return sse(try service.chatStream(body)) }
                return json(try await service.chat(body))
            }
        }
        return router
    }
}

private func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"],
             body: .init(byteBuffer: ByteBuffer(string: value.serialized(sortedKeys: false))))
}

private func errorResponse(_ e: APIError) -> Response {
    json(e.body, status: HTTPResponse.Status(code: e.status))
}

/// Reads and parses the body (413 over `limit`, 400 when not JSON), then runs `handle`.
private func respond(_ request: Request, limit: Int,
                     _ handle: (JSONValue) async throws(APIError) -> Response) async -> Response {
    var request = request
    let buffer: ByteBuffer
    do {
        buffer = try await request.collectBody(upTo: limit)
    } catch {
        return errorResponse(APIError(status: 413, "the request body is larger than the server's limit of \(limit) bytes"))
    }
    let body: JSONValue
    do {
        body = try JSONValue.parse(Data(buffer.readableBytesView), path: "request body")
    } catch let e {
        return errorResponse(APIError(status: 400, "the request body is not valid JSON: \(e)"))
    }
    do {
        return try await handle(body)
    } catch let e {
        return errorResponse(e)
    }
}

/// A streamed response: each payload as a server-sent event `data: ...`; a client that goes
/// away cancels its sequences.
private func sse(_ stream: (payloads: AsyncStream<String>, cancel: @Sendable () -> Void)) -> Response {
    let body = ResponseBody { writer in
        do {
            for await payload in stream.payloads {
                try await writer.write(ByteBuffer(string: "data: \(payload)\n\n"))
            }
            try await writer.finish(nil)
        } catch {
            stream.cancel()
            throw error
        }
    }
    return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
}
