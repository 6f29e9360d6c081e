import Synchronization

/// Live and peak bytes of one memory tier, counted at allocation and release (an allocator
/// high-water mark, not a sum of tensor sizes). A budget is checked by the caller before a run;
/// the account records any excess so a run can report it instead of silently exceeding.
public final class MemoryAccount: Sendable {
    public let name: String
    public let budget: Int?
    private let state = Mutex<(live: Int, peak: Int)>((0, 0))

    public init(name: String, budget: Int?) {
        self.name = name
        self.budget = budget
    }

    public func charge(_ bytes: Int) {
        state.withLock { s in
            s.live += bytes
            s.peak = max(s.peak, s.live)
        }
    }

    public func refund(_ bytes: Int) { state.withLock { $0.live -= bytes } }

    public var live: Int { state.withLock { $0.live } }
    public var peak: Int { state.withLock { $0.peak } }
    /// Bytes by which the peak went over the budget (0 when within it).
    public var excess: Int { budget.map { max(0, peak - $0) } ?? 0 }
}
