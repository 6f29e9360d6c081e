import CDNNL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// bf16 matmuls with f32 accumulation through oneDNN, the library torch runs its CPU bf16
/// GEMMs on: it JIT-compiles AMX or AVX512-BF16 kernels for the CPU it finds. Opened with
/// `dlopen` (libdnnl.so.2, the 2.x C API), so the binary starts and runs without it.
final class OneDNN: @unchecked Sendable {
    private let engine: dnnl_engine_t
    /// oneDNN's kernel for a probe shape, e.g. "brg:avx512_core_amx_bf16".
    let kernel: String
    /// Whether its kernels take weights packed in `PanelLayout` (BA16a64b2a) as they are.
    let takesPanels: Bool
    /// The AMX-INT8 kernel for int8 panels (BA16a64b4a), or nil: without AMX, oneDNN's int8
    /// kernels want weights with compensation terms and would fall back to its reference code.
    let int8Kernel: String?
    /// The fewest rows for which oneDNN multiplies a 64-column int8 slab on AMX rather than
    /// in its reference code (probed at load; 8 with Debian's 2.6.3).
    let int8MinRows: Int
    private let fn: Functions
    private let primitives = Mutex<[Key: Primitive]>([:])
    private let streams = Mutex<[Stream]>([])
    /// Past this many cached shapes new ones are built per call and freed (a server sees many
    /// prompt lengths; a batch job a handful).
    static let cacheLimit = 512

    struct Functions {
        let engineCreate: strata_dnnl_engine_create
        let streamCreate: strata_dnnl_stream_create
        let descByStrides: strata_dnnl_memory_desc_init_by_strides
        let descByTag: strata_dnnl_memory_desc_init_by_tag
        let matmulDesc: strata_dnnl_matmul_desc_init
        let primitiveDescCreate: strata_dnnl_primitive_desc_create
        let primitiveDescQuery: strata_dnnl_primitive_desc_query
        let primitiveDescDestroy: strata_dnnl_primitive_desc_destroy
        let primitiveCreate: strata_dnnl_primitive_create
        let primitiveDestroy: strata_dnnl_primitive_destroy
        let execute: strata_dnnl_primitive_execute
        let memoryCreate: strata_dnnl_memory_create
        let memoryDestroy: strata_dnnl_memory_destroy
        let streamWait: strata_dnnl_stream_wait
        let attrCreate: strata_dnnl_primitive_attr_create
        let attrDestroy: strata_dnnl_primitive_attr_destroy
        let attrScratchpadMode: strata_dnnl_primitive_attr_set_scratchpad_mode
        let queryMD: strata_dnnl_primitive_desc_query_md
        let descSize: strata_dnnl_memory_desc_get_size
        let setOMPThreads: strata_omp_set_num_threads?
    }

    /// A stream is used by one call at a time; idle ones wait in `streams`.
    struct Stream: @unchecked Sendable { let handle: dnnl_stream_t }

    struct Key: Hashable {
        let m: Int, n: Int, k: Int, bias: Bool, panels: Bool
        /// int8: s8 activations and s8 panels into s32 sums (always panels, never a bias).
        var element = PanelLayout.Element.bf16
    }

    final class Primitive: @unchecked Sendable {
        let handle: dnnl_primitive_t
        let kernel: String
        var a = dnnl_memory_desc_t(), b = dnnl_memory_desc_t(), bias = dnnl_memory_desc_t(), c = dnnl_memory_desc_t()
        /// Each call brings its own scratchpad (oneDNN's library-owned one is shared between
        /// primitives and gave NaNs when two backends ran matmuls at once).
        var scratchpad = dnnl_memory_desc_t()
        var scratchpadBytes = 0
        init(handle: dnnl_primitive_t, kernel: String) { self.handle = handle; self.kernel = kernel }
    }

    /// Loads oneDNN and builds a probe matmul; the error says why the library cannot serve.
    static func load() -> Result<OneDNN, LoadError> {
        guard let library = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL) else {
            return .failure(LoadError(reason: "oneDNN 2.x (libdnnl.so.2) not found: " + (dlerror().map { String(cString: $0) } ?? "")))
        }
        func symbol<T>(_ name: String, _ type: T.Type) throws(LoadError) -> T {
            guard let s = dlsym(library, name) else { throw LoadError(reason: "libdnnl.so.2 lacks \(name)") }
            return unsafeBitCast(s, to: type)
        }
        do throws(LoadError) {
            let fn = Functions(
                engineCreate: try symbol("dnnl_engine_create", strata_dnnl_engine_create.self),
                streamCreate: try symbol("dnnl_stream_create", strata_dnnl_stream_create.self),
                descByStrides: try symbol("dnnl_memory_desc_init_by_strides", strata_dnnl_memory_desc_init_by_strides.self),
                descByTag: try symbol("dnnl_memory_desc_init_by_tag", strata_dnnl_memory_desc_init_by_tag.self),
                matmulDesc: try symbol("dnnl_matmul_desc_init", strata_dnnl_matmul_desc_init.self),
                primitiveDescCreate: try symbol("dnnl_primitive_desc_create", strata_dnnl_primitive_desc_create.self),
                primitiveDescQuery: try symbol("dnnl_primitive_desc_query", strata_dnnl_primitive_desc_query.self),
                primitiveDescDestroy: try symbol("dnnl_primitive_desc_destroy", strata_dnnl_primitive_desc_destroy.self),
                primitiveCreate: try symbol("dnnl_primitive_create", strata_dnnl_primitive_create.self),
                primitiveDestroy: try symbol("dnnl_primitive_destroy", strata_dnnl_primitive_destroy.self),
                execute: try symbol("dnnl_primitive_execute", strata_dnnl_primitive_execute.self),
                memoryCreate: try symbol("dnnl_memory_create", strata_dnnl_memory_create.self),
                memoryDestroy: try symbol("dnnl_memory_destroy", strata_dnnl_memory_destroy.self),
                streamWait: try symbol("dnnl_stream_wait", strata_dnnl_stream_wait.self),
                attrCreate: try symbol("dnnl_primitive_attr_create", strata_dnnl_primitive_attr_create.self),
                attrDestroy: try symbol("dnnl_primitive_attr_destroy", strata_dnnl_primitive_attr_destroy.self),
                attrScratchpadMode: try symbol("dnnl_primitive_attr_set_scratchpad_mode",
                                               strata_dnnl_primitive_attr_set_scratchpad_mode.self),
                queryMD: try symbol("dnnl_primitive_desc_query_md", strata_dnnl_primitive_desc_query_md.self),
                descSize: try symbol("dnnl_memory_desc_get_size", strata_dnnl_memory_desc_get_size.self),
                // oneDNN's Debian build threads with OpenMP (libgomp, loaded with it); each call
                // is given the backend's thread count.
                setOMPThreads: dlsym(library, "omp_set_num_threads").map { unsafeBitCast($0, to: strata_omp_set_num_threads.self) })
            var engine: dnnl_engine_t?
            guard fn.engineCreate(&engine, dnnl_cpu, 0) == dnnl_success, let engine else {
                throw LoadError(reason: "oneDNN could not create a CPU engine")
            }
            let dnnl = OneDNN(engine: engine, fn: fn, kernel: "", takesPanels: false, int8Kernel: nil, int8MinRows: 1)
            let probe = try dnnl.primitive(Key(m: 32, n: 64, k: 64, bias: false, panels: false))
            guard probe.kernel.contains("amx") || probe.kernel.contains("bf16") else {
                throw LoadError(reason: "oneDNN has no bf16 matrix kernel for this CPU (it offers \(probe.kernel))")
            }
            // Packed weights only where the same kind of kernel takes them (a reference
            // implementation would take them too, at a hundredth of the speed).
            let packed = try? dnnl.primitive(Key(m: 32, n: 192, k: 96, bias: false, panels: true))
            let takesPanels = packed.map { $0.kernel.hasPrefix("brg") && probe.kernel.hasPrefix("brg") } ?? false
            let int8 = try? dnnl.primitive(Key(m: 32, n: 192, k: 128, bias: false, panels: true, element: .int8))
            let int8Kernel = int8.flatMap { $0.kernel.contains("amx_int8") ? $0.kernel : nil }
            for p in [probe, packed, int8].compactMap({ $0 }) { _ = fn.primitiveDestroy(p.handle) }
            let int8MinRows = int8Kernel == nil ? 1 : [1, 2, 4, 8, 16, 32].first {
                dnnl.kernel(m: $0, n: PanelLayout.panelWidth, k: 256, element: .int8).contains("amx_int8")
            } ?? 32
            return .success(OneDNN(engine: engine, fn: fn, kernel: probe.kernel, takesPanels: takesPanels, int8Kernel: int8Kernel,
                                   int8MinRows: int8MinRows))
        } catch {
            return .failure(error)
        }
    }

    struct LoadError: Error, Sendable { let reason: String }

    private init(engine: dnnl_engine_t, fn: Functions, kernel: String, takesPanels: Bool, int8Kernel: String?, int8MinRows: Int) {
        self.engine = engine
        self.fn = fn
        self.kernel = kernel
        self.takesPanels = takesPanels
        self.int8Kernel = int8Kernel
        self.int8MinRows = int8MinRows
    }

    /// c[m, n] = a[m, k] (bf16) * b^T + bias, where b is a bf16 weight [n, k] stored row-major
    /// (oneDNN sees a k x n matrix with strides (1, k)) or, with `panels`, packed in
    /// `PanelLayout`. a and c are dense: a strided c (a column slab of a wider output) sends
    /// oneDNN 2.6 to its reference implementation, ~1000x slower, so the API has no strides.
    /// With `element` int8, a is s8, b int8 panels and c receives s32 sums.
    func matmul(m: Int, n: Int, k: Int, a: UnsafeRawPointer, b: UnsafeRawPointer, panels: Bool = false,
                element: PanelLayout.Element = .bf16, bias: UnsafePointer<Float>?, c: UnsafeMutableRawPointer, threads: Int) {
        let key = Key(m: m, n: n, k: k, bias: bias != nil, panels: panels || element == .int8, element: element)
        let cached = primitives.withLock { $0[key] }
        let p: Primitive
        if let cached {
            p = cached
        } else {
            do throws(LoadError) { p = try primitive(key) } catch {
                fatalError("oneDNN refused a \(m)x\(k) by \(k)x\(n) \(element) matmul it accepted before: \(error.reason)")
            }
        }
        if cached == nil {
            primitives.withLock { if $0.count < Self.cacheLimit { $0[key] = p } }
        }
        fn.setOMPThreads?(Int32(threads))
        let stream = streams.withLock { $0.popLast() } ?? makeStream()
        var memories: [dnnl_memory_t?] = []
        func memory(_ shared: dnnl_memory_desc_t, _ data: UnsafeRawPointer) -> dnnl_memory_t? {
            var mem: dnnl_memory_t?, desc = shared  // a copy: other workers read the same primitive
            _ = fn.memoryCreate(&mem, &desc, engine, UnsafeMutableRawPointer(mutating: data))
            memories.append(mem)
            return mem
        }
        var args = [dnnl_exec_arg_t(arg: strata_dnnl_arg_src, memory: memory(p.a, a)),
                    dnnl_exec_arg_t(arg: strata_dnnl_arg_weights, memory: memory(p.b, b)),
                    dnnl_exec_arg_t(arg: strata_dnnl_arg_dst, memory: memory(p.c, c))]
        if let bias { args.append(dnnl_exec_arg_t(arg: strata_dnnl_arg_bias, memory: memory(p.bias, bias))) }
        let scratchpad = p.scratchpadBytes > 0 ? UnsafeMutableRawPointer.allocate(byteCount: p.scratchpadBytes, alignment: 64) : nil
        defer { scratchpad?.deallocate() }
        if let scratchpad { args.append(dnnl_exec_arg_t(arg: strata_dnnl_arg_scratchpad, memory: memory(p.scratchpad, scratchpad))) }
        let status = fn.execute(p.handle, stream.handle, Int32(args.count), &args)
        _ = fn.streamWait(stream.handle)
        for mem in memories { _ = fn.memoryDestroy(mem) }
        streams.withLock { $0.append(stream) }
        precondition(status == dnnl_success, "oneDNN matmul \(m)x\(k)x\(n) failed with status \(status.rawValue)")
        if cached == nil, primitives.withLock({ $0[key] }) !== p {
            _ = fn.primitiveDestroy(p.handle)  // built for this call only: the cache is full
        }
    }

    /// The kernel oneDNN picks for a shape (bench-gemm reports it).
    func kernel(m: Int, n: Int, k: Int, element: PanelLayout.Element = .bf16) -> String {
        let panels = element == .int8 || takesPanels
        guard let p = try? primitive(Key(m: m, n: n, k: k, bias: false, panels: panels, element: element)) else { return "none" }
        _ = fn.primitiveDestroy(p.handle)
        return p.kernel
    }

    private func makeStream() -> Stream {
        var stream: dnnl_stream_t?
        guard fn.streamCreate(&stream, engine, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success, let stream else {
            fatalError("oneDNN could not create a stream")
        }
        return Stream(handle: stream)
    }

    private func primitive(_ key: Key) throws(LoadError) -> Primitive {
        var a = dnnl_memory_desc_t(), b = dnnl_memory_desc_t(), bias = dnnl_memory_desc_t(), c = dnnl_memory_desc_t()
        var ok = true
        withUnsafeTemporaryAllocation(of: dnnl_dim_t.self, capacity: 4) { d in
            func set(_ desc: inout dnnl_memory_desc_t, _ rows: Int, _ cols: Int, _ rowStride: Int, _ colStride: Int,
                     _ type: dnnl_data_type_t) {
                d[0] = dnnl_dim_t(rows); d[1] = dnnl_dim_t(cols); d[2] = dnnl_dim_t(rowStride); d[3] = dnnl_dim_t(colStride)
                // The C function reads `ndims` entries of each dims array.
                ok = ok && fn.descByStrides(&desc, 2, d.baseAddress!, type, d.baseAddress! + 2) == dnnl_success
            }
            let int8 = key.element == .int8
            set(&a, key.m, key.k, key.k, 1, int8 ? dnnl_s8 : dnnl_bf16)
            if key.panels {
                d[0] = dnnl_dim_t(key.k); d[1] = dnnl_dim_t(key.n)
                ok = ok && fn.descByTag(&b, 2, d.baseAddress!, int8 ? dnnl_s8 : dnnl_bf16,
                                        int8 ? dnnl_BA16a64b4a : dnnl_BA16a64b2a) == dnnl_success
            } else {
                set(&b, key.k, key.n, 1, key.k, dnnl_bf16)
            }
            set(&c, key.m, key.n, key.n, 1, int8 ? dnnl_s32 : dnnl_f32)
            if key.bias { set(&bias, 1, key.n, key.n, 1, dnnl_f32) }
        }
        guard ok else { throw LoadError(reason: "bad memory descriptor for \(key)") }
        var desc = dnnl_matmul_desc_t()
        let described = key.bias ? fn.matmulDesc(&desc, &a, &b, &bias, &c) : fn.matmulDesc(&desc, &a, &b, nil, &c)
        guard described == dnnl_success else {
            throw LoadError(reason: "matmul descriptor refused for \(key)")
        }
        var attr: dnnl_primitive_attr_t?
        guard fn.attrCreate(&attr) == dnnl_success, let attr, fn.attrScratchpadMode(attr, dnnl_scratchpad_mode_user) == dnnl_success else {
            throw LoadError(reason: "oneDNN refused a user scratchpad")
        }
        defer { _ = fn.attrDestroy(attr) }
        var pd: dnnl_primitive_desc_t?
        guard fn.primitiveDescCreate(&pd, &desc, attr, engine, nil) == dnnl_success, let pd else {
            throw LoadError(reason: "no matmul implementation for \(key)")
        }
        defer { _ = fn.primitiveDescDestroy(pd) }
        var info: UnsafePointer<CChar>?
        _ = withUnsafeMutablePointer(to: &info) { fn.primitiveDescQuery(pd, dnnl_query_impl_info_str, 0, $0) }
        var handle: dnnl_primitive_t?
        guard fn.primitiveCreate(&handle, pd) == dnnl_success, let handle else {
            throw LoadError(reason: "matmul primitive creation failed for \(key)")
        }
        let p = Primitive(handle: handle, kernel: info.map { String(cString: $0) } ?? "unknown")
        p.a = a; p.b = b; p.bias = bias; p.c = c
        if let md = fn.queryMD(pd, dnnl_query_scratchpad_md, 0) {
            p.scratchpad = md.pointee
            p.scratchpadBytes = fn.descSize(md)
        }
        return p
    }
}
