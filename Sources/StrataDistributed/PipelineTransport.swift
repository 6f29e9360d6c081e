import StrataCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How pipeline stages exchange messages: MPI between processes (`MPIWorld`), or in-process
/// mailboxes (`LocalTransport`) so the pipeline's logic is tested without launching ranks.
/// Messages between one pair of ranks on one tag arrive in the order they were sent.
public protocol PipelineTransport: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Starts sending; returns without waiting for the receiver.
    func send(_ bytes: [UInt8], to destination: Int, tag: Int) throws
    /// Waits for the next message from `source` on `tag`.
    func receive(from source: Int, tag: Int) throws -> [UInt8]
    /// Lets the next message from `source` on `tag` (at most `capacity` bytes) start arriving
    /// while this rank computes; the following `receive` returns it.
    func prefetch(from source: Int, tag: Int, capacity: Int) throws
    /// Waits until every send has left.
    func flush() throws
    func barrier() throws
}

/// Ranks as threads of one process, for tests: each (source, destination, tag) is a FIFO.
public final class LocalTransport: PipelineTransport, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    private let hub: Hub

    /// One transport per rank, all connected.
    public static func world(size: Int) -> [LocalTransport] {
        let hub = Hub(size: size)
        return (0..<size).map { LocalTransport(rank: $0, size: size, hub: hub) }
    }

    private init(rank: Int, size: Int, hub: Hub) { self.rank = rank; self.size = size; self.hub = hub }

    final class Hub: Sendable {
        struct Key: Hashable { let source, destination, tag: Int }
        let queues = Mutex<[Key: [[UInt8]]]>([:])
        let barrierCount = Mutex<(waiting: Int, generation: Int)>((0, 0))
        let size: Int
        init(size: Int) { self.size = size }
    }

    public func send(_ bytes: [UInt8], to destination: Int, tag: Int) throws {
        let key = Hub.Key(source: rank, destination: destination, tag: tag)
        hub.queues.withLock { $0[key, default: []].append(bytes) }
    }

    public func receive(from source: Int, tag: Int) throws -> [UInt8] {
        let key = Hub.Key(source: source, destination: rank, tag: tag)
        while true {
            let message: [UInt8]? = hub.queues.withLock { queues in
                guard var q = queues[key], !q.isEmpty else { return nil }
                let first = q.removeFirst()
                queues[key] = q
                return first
            }
            if let message { return message }
            usleep(20)
        }
    }

    public func flush() throws {}

    /// In-process messages are already in memory.
    public func prefetch(from source: Int, tag: Int, capacity: Int) throws {}

    public func barrier() throws {
        let generation = hub.barrierCount.withLock { state -> Int in
            state.waiting += 1
            let g = state.generation
            if state.waiting == hub.size { state = (0, g + 1) }
            return g
        }
        while hub.barrierCount.withLock({ $0.generation }) == generation { usleep(20) }
    }
}
