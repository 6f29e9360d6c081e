import Dispatch

/// The result of a transfer that may still be running on an I/O queue. Without overlap the
/// work runs at once on the caller's thread and the value is ready immediately.
final class Pending<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, Error>?

    /// Runs `body` on `queue` (in order with that queue's other transfers), or right here when
    /// `queue` is nil.
    init(on queue: DispatchQueue?, _ body: @escaping @Sendable () throws -> T) {
        guard let queue else {
            result = Result { try body() }
            done.signal()
            return
        }
        queue.async { [self] in
            result = Result { try body() }
            done.signal()
        }
    }

    func wait() throws -> T {
        done.wait()
        done.signal()   // later waits return at once
        return try result!.get()
    }
}
