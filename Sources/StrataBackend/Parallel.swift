import Dispatch
import Synchronization

/// Carries a value the compiler cannot prove Sendable across a fork-join where the caller
/// guarantees disjoint access (each worker touches its own rows).
struct UncheckedSendable<T>: @unchecked Sendable { let value: T }

/// Splits `count` items into contiguous chunks over at most `threads` workers and waits for all.
@inline(__always)
public func parallelFor(_ count: Int, threads: Int, minimumPerThread: Int = 1, _ body: (Range<Int>) -> Void) {
    let workers = max(1, min(threads, count / max(minimumPerThread, 1)))
    if workers <= 1 {
        if count > 0 { body(0..<count) }
        return
    }
    let chunk = (count + workers - 1) / workers
    withoutActuallyEscaping(body) { escapable in
        let box = UncheckedSendable(value: escapable)
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let start = w * chunk
            let end = min(count, start + chunk)
            if start < end { box.value(start..<end) }
        }
    }
}

/// Splits `count` items into chunks of `grain` that up to `threads` workers take in turn until
/// none are left, and waits for all. With `parallelFor`'s one chunk per worker, a worker GCD
/// wakes late (tens of microseconds on these VMs, against a decode step's matmuls of about a
/// hundred) makes the caller wait for its whole share, or run it after its own; here it takes
/// fewer chunks. `body` may run several times per worker.
public func parallelChunks(_ count: Int, threads: Int, grain: Int, _ body: (Range<Int>) -> Void) {
    let grain = max(1, grain), chunks = (count + grain - 1) / grain
    let workers = max(1, min(threads, chunks))
    if workers <= 1 {
        if count > 0 { body(0..<count) }
        return
    }
    let next = ChunkCounter()
    withoutActuallyEscaping(body) { escapable in
        let box = UncheckedSendable(value: escapable)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while true {
                let chunk = next.value.wrappingAdd(1, ordering: .relaxed).oldValue
                if chunk >= chunks { return }
                box.value((chunk * grain)..<min(count, (chunk + 1) * grain))
            }
        }
    }
}

private final class ChunkCounter: Sendable {
    let value = Atomic<Int>(0)
}
