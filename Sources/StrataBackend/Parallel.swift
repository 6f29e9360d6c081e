import Dispatch

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
