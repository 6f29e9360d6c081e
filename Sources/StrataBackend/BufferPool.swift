import Synchronization

/// Reuses large aligned buffers (weight staging, cache staging, I/O bounce buffers). Fresh
/// multi-hundred-megabyte allocations are mmap'd by the allocator and page-faulted on every
/// use: for an OPT-13B layer stream that cost more system time than the disk reads. A pooled
/// buffer stays charged to its tier's account while idle, which is what it occupies.
///
/// On a GPU the computation runs behind the host: a staging buffer released by the host may
/// still be read by kernels already enqueued. A pool made with `releaseFence` records a compute
/// fence at each release, and `takeFenced` hands it out with the buffer: the copy that refills
/// the buffer waits on it.
public final class BufferPool: Sendable {
    let account: MemoryAccount?
    let alignment: Int
    let backendName: String
    let allocate: @Sendable (Int) -> DeviceBuffer
    let releaseFence: (@Sendable () -> ComputeFence)?
    private let free = Mutex<[(buffer: DeviceBuffer, released: ComputeFence?)]>([])

    public init(backendName: String, account: MemoryAccount?, alignment: Int = 4096,
                allocate: (@Sendable (Int) -> DeviceBuffer)? = nil, releaseFence: (@Sendable () -> ComputeFence)? = nil) {
        self.backendName = backendName
        self.account = account
        self.alignment = alignment
        self.allocate = allocate ?? { DeviceBuffer.host(byteCount: $0, backendName: backendName, account: account, alignment: alignment) }
        self.releaseFence = releaseFence
    }

    /// A buffer of at least `byteCount` bytes; it returns to the pool when the handle is released.
    public func take(_ byteCount: Int) -> DeviceBuffer { takeFenced(byteCount).buffer }

    /// A buffer, and the fence after which the computation no longer reads it (nil for a new
    /// buffer, or a pool without fences).
    public func takeFenced(_ byteCount: Int) -> (buffer: DeviceBuffer, reusable: ComputeFence?) {
        let slot = free.withLock { list -> (buffer: DeviceBuffer, released: ComputeFence?)? in
            guard let i = list.indices.filter({ list[$0].buffer.byteCount >= byteCount })
                .min(by: { list[$0].buffer.byteCount < list[$1].buffer.byteCount }) else { return nil }
            return list.remove(at: i)
        } ?? (allocate(byteCount), nil)
        let fence = releaseFence
        let handle = DeviceBuffer(pointer: slot.buffer.pointer, byteCount: byteCount, backendName: backendName, owner: nil) { [self] _ in
            let released = fence?()
            free.withLock { $0.append((slot.buffer, released)) }
        }
        return (handle, slot.released)
    }

    /// Releases idle buffers (their memory goes back to the system and the account).
    public func drain() { free.withLock { $0.removeAll() } }
}
