import Synchronization

/// Reuses large aligned buffers (weight staging, cache staging, I/O bounce buffers). Fresh
/// multi-hundred-megabyte allocations are mmap'd by the allocator and page-faulted on every
/// use: for an OPT-13B layer stream that cost more system time than the disk reads. A pooled
/// buffer stays charged to its tier's account while idle, which is what it occupies.
public final class BufferPool: Sendable {
    let account: MemoryAccount?
    let alignment: Int
    let backendName: String
    private let free = Mutex<[DeviceBuffer]>([])

    public init(backendName: String, account: MemoryAccount?, alignment: Int = 4096) {
        self.backendName = backendName
        self.account = account
        self.alignment = alignment
    }

    /// A buffer of at least `byteCount` bytes; it returns to the pool when the handle is released.
    public func take(_ byteCount: Int) -> DeviceBuffer {
        let slot = free.withLock { list -> DeviceBuffer? in
            guard let i = list.indices.filter({ list[$0].byteCount >= byteCount }).min(by: { list[$0].byteCount < list[$1].byteCount })
            else { return nil }
            return list.remove(at: i)
        } ?? DeviceBuffer.host(byteCount: byteCount, backendName: backendName, account: account, alignment: alignment)
        return DeviceBuffer(pointer: slot.pointer, byteCount: byteCount, backendName: backendName, owner: nil) { [self] _ in
            free.withLock { $0.append(slot) }
        }
    }

    /// Releases idle buffers (their memory goes back to the system and the account).
    public func drain() { free.withLock { $0.removeAll() } }
}
