import CMPI
import StrataCore
#if canImport(Glibc)
import Glibc
#endif

/// The ranks of one `mpirun` launch, over Open MPI's C API. libmpi is opened with `dlopen`
/// (RTLD_GLOBAL: Open MPI's own plugins resolve its symbols from the global scope), so the
/// strata binary needs MPI only when a pipeline actually runs.
///
/// Waiting never blocks inside MPI: a blocked MPI call spins a core at 100%, and ranks that
/// share a machine (tests, `--oversubscribe`, several ranks per host) would take that core
/// from the stage that is computing. Waits poll (`MPI_Iprobe`, `MPI_Test`) with a short sleep.
public final class MPIWorld: PipelineTransport, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    private let fn: Functions
    private let comm: MPI_Comm
    private let byte: MPI_Datatype
    /// Sends still in flight, with the bytes they read (kept alive until they complete).
    private var pending: [(request: MPI_Request, bytes: UnsafeMutableRawBufferPointer)] = []
    /// Receives posted ahead (`prefetch`), per (source, tag), with the buffer they fill.
    private var posted: [Int: (request: MPI_Request, buffer: UnsafeMutableRawBufferPointer)] = [:]

    struct Functions {
        let initThread: strata_mpi_init_thread
        let initialized: strata_mpi_initialized
        let finalize: strata_mpi_finalize
        let commRank: strata_mpi_comm_rank
        let commSize: strata_mpi_comm_size
        let isend: strata_mpi_isend
        let irecv: strata_mpi_irecv
        let recv: strata_mpi_recv
        let iprobe: strata_mpi_iprobe
        let getCount: strata_mpi_get_count
        let test: strata_mpi_test
        let abort: strata_mpi_abort
        let barrier: strata_mpi_barrier
        let setErrhandler: strata_mpi_comm_set_errhandler
        let errorString: strata_mpi_error_string
    }

    /// Whether this process was started by `mpirun` (Open MPI, or a PMI launcher such as srun).
    public static var launchedByMPIRun: Bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].contains { (name: String) in getenv(name) != nil }
    }

    /// Opens libmpi and joins the world; the error says what is missing.
    public init() throws {
        var library: UnsafeMutableRawPointer?
        var reasons: [String] = []
        for name in ["libmpi.so.40", "libmpi.so"] {
            library = dlopen(name, RTLD_NOW | RTLD_GLOBAL)
            if library != nil { break }
            reasons.append(dlerror().map { String(cString: $0) } ?? name)
        }
        guard let library else {
            throw StrataError.invalidRequest("Open MPI's library is not installed (apt install libopenmpi-dev openmpi-bin): \(reasons.joined(separator: "; "))")
        }
        func symbol<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let s = dlsym(library, name) else { throw StrataError.invalidRequest("libmpi lacks \(name); Strata needs Open MPI 4 or later") }
            return unsafeBitCast(s, to: type)
        }
        fn = Functions(
            initThread: try symbol("MPI_Init_thread", strata_mpi_init_thread.self),
            initialized: try symbol("MPI_Initialized", strata_mpi_initialized.self),
            finalize: try symbol("MPI_Finalize", strata_mpi_finalize.self),
            commRank: try symbol("MPI_Comm_rank", strata_mpi_comm_rank.self),
            commSize: try symbol("MPI_Comm_size", strata_mpi_comm_size.self),
            isend: try symbol("MPI_Isend", strata_mpi_isend.self),
            irecv: try symbol("MPI_Irecv", strata_mpi_irecv.self),
            recv: try symbol("MPI_Recv", strata_mpi_recv.self),
            iprobe: try symbol("MPI_Iprobe", strata_mpi_iprobe.self),
            getCount: try symbol("MPI_Get_count", strata_mpi_get_count.self),
            test: try symbol("MPI_Test", strata_mpi_test.self),
            abort: try symbol("MPI_Abort", strata_mpi_abort.self),
            barrier: try symbol("MPI_Barrier", strata_mpi_barrier.self),
            setErrhandler: try symbol("MPI_Comm_set_errhandler", strata_mpi_comm_set_errhandler.self),
            errorString: try symbol("MPI_Error_string", strata_mpi_error_string.self))
        // MPI_COMM_WORLD and MPI_BYTE are addresses of Open MPI's predefined objects.
        guard let world = dlsym(library, "ompi_mpi_comm_world"), let byteType = dlsym(library, "ompi_mpi_byte"),
              let errorsReturn = dlsym(library, "ompi_mpi_errors_return") else {
            throw StrataError.invalidRequest("libmpi is not Open MPI (no ompi_mpi_comm_world); Strata's pipeline needs Open MPI")
        }
        comm = unsafeBitCast(world, to: MPI_Comm.self)
        byte = unsafeBitCast(byteType, to: MPI_Datatype.self)
        var provided: Int32 = 0
        // One thread calls MPI (the stage's loop); compute threads never do.
        guard fn.initThread(nil, nil, Int32(MPI_THREAD_FUNNELED), &provided) == 0 else {
            throw StrataError.invalidRequest("MPI_Init_thread failed")
        }
        // Errors come back as return codes, to be reported with the rank that saw them.
        _ = fn.setErrhandler(comm, unsafeBitCast(errorsReturn, to: MPI_Errhandler.self))
        var r: Int32 = 0, s: Int32 = 0
        _ = fn.commRank(comm, &r)
        _ = fn.commSize(comm, &s)
        rank = Int(r)
        size = Int(s)
    }

    private func check(_ code: Int32, _ what: String) throws {
        guard code != 0 else { return }
        var buffer = [CChar](repeating: 0, count: 512)
        var length: Int32 = 0
        _ = fn.errorString(code, &buffer, &length)
        let text = String(decoding: buffer.prefix(Int(max(0, length))).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        throw StrataError.ioFailure(path: "rank \(rank)", detail: "\(what): \(text)")
    }

    public func send(_ bytes: [UInt8], to destination: Int, tag: Int) throws {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
        bytes.withUnsafeBytes { copy.copyMemory(from: $0) }
        var request: MPI_Request?
        try check(fn.isend(copy.baseAddress, Int32(bytes.count), byte, Int32(destination), Int32(tag), comm, &request),
                  "send to rank \(destination)")
        pending.append((request!, copy))
        try reapSends()
    }

    /// Frees the buffers of sends that completed.
    private func reapSends() throws {
        var kept: [(request: MPI_Request, bytes: UnsafeMutableRawBufferPointer)] = []
        for var entry in pending {
            var done: Int32 = 0
            var request: MPI_Request? = entry.request
            try check(fn.test(&request, &done, nil), "completing a send")
            if done != 0 { entry.bytes.deallocate() } else { entry.request = request!; kept.append(entry) }
        }
        pending = kept
    }

    /// Posts the receive of the next message from `source` on `tag` (at most `capacity` bytes)
    /// now, so its transfer proceeds while this rank computes; `receive` then completes it.
    public func prefetch(from source: Int, tag: Int, capacity: Int) throws {
        let key = source << 8 | tag
        guard posted[key] == nil else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(capacity, 1), alignment: 64)
        var request: MPI_Request?
        do {
            try check(fn.irecv(buffer.baseAddress, Int32(capacity), byte, Int32(source), Int32(tag), comm, &request),
                      "posting a receive from rank \(source)")
        } catch {
            buffer.deallocate()
            throw error
        }
        posted[key] = (request!, buffer)
    }

    public func receive(from source: Int, tag: Int) throws -> [UInt8] {
        var status = MPI_Status()
        var count: Int32 = 0
        if let (request, buffer) = posted.removeValue(forKey: source << 8 | tag) {
            defer { buffer.deallocate() }
            var current: MPI_Request? = request
            try poll { done in try check(fn.test(&current, &done, &status), "waiting for rank \(source)") }
            try check(fn.getCount(&status, byte, &count), "sizing a message from rank \(source)")
            return Array(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buffer)[0..<Int(count)]))
        }
        try poll { found in try check(fn.iprobe(Int32(source), Int32(tag), comm, &found, &status), "waiting for rank \(source)") }
        try check(fn.getCount(&status, byte, &count), "sizing a message from rank \(source)")
        var bytes = [UInt8](repeating: 0, count: Int(count))
        try bytes.withUnsafeMutableBytes { buffer in
            try check(fn.recv(buffer.baseAddress, count, byte, Int32(source), Int32(tag), comm, nil), "receiving from rank \(source)")
        }
        return bytes
    }

    /// Calls `test` until it sets its flag, completing finished sends meanwhile: it spins
    /// briefly (a decode step's message is usually close), then backs off to 200 µs sleeps.
    private func poll(_ test: (inout Int32) throws -> Void) throws {
        var flag: Int32 = 0
        var idle = 0
        while true {
            try test(&flag)
            if flag != 0 { return }
            try reapSends()
            idle += 1
            if idle > 64 { usleep(idle > 1000 ? 200 : 20) }
        }
    }

    public func flush() throws {
        while !pending.isEmpty {
            try reapSends()
            if !pending.isEmpty { usleep(50) }
        }
    }

    public func barrier() throws {
        try flush()
        try check(fn.barrier(comm), "barrier")
    }

    /// Ends every rank of the job (mpirun reports the code); used when this rank cannot go on.
    public func abort(code: Int32) -> Never {
        _ = fn.abort(comm, code)
        exit(code)
    }

    public func finalize() {
        try? flush()
        _ = fn.finalize()
    }
}
