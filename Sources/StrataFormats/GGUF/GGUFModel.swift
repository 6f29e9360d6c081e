import StrataCore
import Synchronization

/// A GGUF model file seen as a Hugging Face model directory: the config, tokenizer and
/// generation files a directory would hold (derived from the file's metadata, so
/// `strata convert` can write them out) and its tensors under Hugging Face names.
///
/// Q4_0, Q4_1 and Q8_0 decoder matrices stay quantized (see `GGUFExact`): a layer whose seven
/// matrices are all one of those types is stored at 4 or 8 bits, groups of 32, exactly as in
/// the file. Every other tensor is decoded to f32 (F16/BF16 stay as they are unless they must
/// be reordered), which is exact for the file's values.
public final class GGUFModel: Sendable {
    public static let supportedArchitectures = ["llama", "qwen2"]

    public let file: GGUFFile
    public let architecture: String
    /// config.json, tokenizer.json, tokenizer_config.json and generation_config.json.
    public let companions: [String: JSONValue]
    /// Bits each decoder layer is stored at (16 = decoded to full precision).
    public let layerBits: [Int]
    /// The group form `output.weight` is also offered in (`GGUFHead`), when the layers are kept
    /// quantized too: nil for an f16 or K-quant model, which loads as a plain checkpoint.
    public let headScheme: QuantizationScheme?
    /// Hugging Face tensor name -> (GGUF tensor, heads whose rotary halves are un-interleaved on load).
    let names: [String: (tensor: GGUFTensorInfo, heads: Int?)]
    public var path: String { file.path }

    private static let cache = Mutex<[String: GGUFModel]>([:])

    /// The model at `path`, parsed once per process (several layers open the same file).
    public static func open(_ path: String) throws -> GGUFModel {
        if let m = cache.withLock({ $0[path] }) { return m }
        let m = try GGUFModel(file: GGUFFile(path: path))
        cache.withLock { $0[path] = m }
        return m
    }

    public init(file: GGUFFile) throws {
        self.file = file
        let arch = try file.string("general.architecture")
        guard Self.supportedArchitectures.contains(arch) else {
            throw StrataError.invalidFile(path: file.path, detail: "metadata 'general.architecture' is '\(arch)'; supported: \(Self.supportedArchitectures.joined(separator: ", "))")
        }
        architecture = arch
        for t in file.tensors where !t.type.isSupported {
            throw StrataError.invalidFile(path: file.path, detail: "tensor '\(t.name)' has type \(t.type), which Strata does not decode (supported: \(GGMLType.supported.map(\.description).joined(separator: ", ")))")
        }
        var config = try GGUFMetadata.config(file, architecture: arch)
        if let t = file.tensorsByName["rope_freqs.weight"] {
            guard t.type == .f32, t.shape.count == 1 else {
                throw StrataError.invalidFile(path: file.path, detail: "tensor 'rope_freqs.weight' must be a vector of F32")
            }
            guard config["rope_scaling"] == nil else {
                throw StrataError.invalidFile(path: file.path, detail: "both '\(arch).rope.scaling.type' and tensor 'rope_freqs.weight' scale RoPE")
            }
            let raw = file.bytes(of: t)  // general.alignment may be 1: read unaligned
            let factors = (0..<raw.count / 4).map { Double(raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self)) }
            if let scaling = try RopeFactors.llama3Scaling(factors, theta: config["rope_theta"]!.double!,
                                                           headDim: config["head_dim"]!.int!, path: file.path) {
                config["rope_scaling"] = .object(scaling)
            }
        }
        let layers = config["num_hidden_layers"]!.int!
        // Checked before the per-layer loops below (fuzzing found a block_count of 10^9 hanging them).
        guard (1...ModelConfig.maxLayers).contains(layers) else {
            throw StrataError.invalidFile(path: file.path, detail: "metadata '\(arch).block_count' is \(layers); expected 1 to \(ModelConfig.maxLayers) layers")
        }
        let heads = config["num_attention_heads"]!.int!, kvHeads = config["num_key_value_heads"]!.int!

        // llama.cpp's converter interleaves the rotary halves of Llama's q/k rows; undo it.
        let permute = arch == "llama"
        var names: [String: (GGUFTensorInfo, Int?)] = [:]
        for t in file.tensors where t.name != "rope_freqs.weight" {
            guard let hf = Self.huggingFaceName(t.name) else {
                throw StrataError.invalidFile(path: file.path, detail: "tensor '\(t.name)' is not part of a \(arch) model Strata knows")
            }
            if let layer = Self.layerIndex(hf), layer >= layers {
                throw StrataError.invalidFile(path: file.path, detail: "tensor '\(t.name)' belongs to layer \(layer), but '\(arch).block_count' is \(layers)")
            }
            var h: Int? = nil
            if permute && t.name.hasSuffix("attn_q.weight") || permute && t.name.hasSuffix("attn_q.bias") { h = heads }
            if permute && t.name.hasSuffix("attn_k.weight") || permute && t.name.hasSuffix("attn_k.bias") { h = kvHeads }
            names[hf] = (t, h)
        }
        var bits: [Int] = []
        for layer in 0..<layers {
            let matrices = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                .compactMap { file.tensorsByName["blk.\(layer).\($0).weight"] }
            let kinds = Set(matrices.map { $0.type.exactBits ?? 16 })
            let exact = matrices.count == 7 && kinds.count == 1 && kinds.first! < 16
                && matrices.allSatisfy { GGUFExact.isExact(file.bytes(of: $0), type: $0.type) }
            bits.append(exact ? kinds.first! : 16)
        }
        layerBits = bits
        self.names = names.mapValues { (tensor: $0.0, heads: $0.1) }
        var head: QuantizationScheme? = nil
        if bits.contains(where: { $0 < 16 }), let output = file.tensorsByName["output.weight"], output.shape.count == 2,
           let scheme = GGUFHead.scheme(for: output.type), output.shape[1] % 32 == 0,
           GGUFHead.isRepresentable(file.bytes(of: output), type: output.type) {
            head = scheme
        }
        headScheme = head
        var configJSON = config
        if bits.contains(where: { $0 < 16 }) {
            var precision = PrecisionMap(bits: Dictionary(uniqueKeysWithValues: bits.enumerated().map { ($0.offset, $0.element) }),
                                         groupSize: 32)
            precision.head = head
            configJSON["strata_precision"] = precision.json
        }
        configJSON["tie_word_embeddings"] = .bool(file.tensorsByName["output.weight"] == nil)
        var companions = try GGUFMetadata.tokenizerFiles(file, config: config)
        companions["config.json"] = .object(configJSON)
        self.companions = companions
    }

    public func companion(_ name: String) throws -> JSONValue {
        guard let v = companions[name] else { throw StrataError.invalidFile(path: path, detail: "no \(name) can be derived") }
        return v
    }

    /// llama.cpp tensor names -> Hugging Face Llama names.
    static func huggingFaceName(_ name: String) -> String? {
        switch name {
        case "token_embd.weight": return "model.embed_tokens.weight"
        case "output_norm.weight": return "model.norm.weight"
        case "output.weight": return "lm_head.weight"
        default: break
        }
        let parts = name.split(separator: ".", maxSplits: 2)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]) else { return nil }
        let map = [
            "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
            "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
            "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
            "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
            "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
            "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
        ]
        guard let suffix = map[String(parts[2])] else { return nil }
        return "model.layers.\(layer).\(suffix)"
    }

    /// Shape (Hugging Face order) of the tensor with Hugging Face name `hfName`.
    public func shape(of hfName: String) -> [Int]? { names[hfName]?.tensor.shape }

    /// Decoder layer of a Hugging Face name, nil for embeddings, final norm and head.
    public static func layerIndex(_ hfName: String) -> Int? {
        guard hfName.hasPrefix("model.layers.") else { return nil }
        return Int(hfName.dropFirst("model.layers.".count).prefix { $0 != "." })
    }
}

/// The JSON files a model holds: read from a directory, or derived from a GGUF file's metadata.
public enum ModelFiles {
    /// `name` (e.g. `config.json`) of the model at `path` and the path errors should name; nil
    /// when a directory has no such file.
    public static func json(_ path: String, _ name: String) throws -> (value: JSONValue, path: String)? {
        if GGUFFile.isGGUF(path) { return (try GGUFModel.open(path).companion(name), path) }
        let file = FileSystem.join(path, name)
        guard FileSystem.exists(file) else { return nil }
        return (try JSONValue.load(path: file), file)
    }
}

/// Bytes a rows permutation moves: row r of the result is row `source(r)` of the file.
/// llama.cpp stores each head's rows as (i, half) pairs interleaved; Hugging Face keeps the two
/// halves apart: HF row half * (d/2) + i = file row 2i + half.
enum RotaryRows {
    static func source(_ row: Int, rowsPerHead d: Int) -> Int {
        let head = row / d, r = row % d, half = r / (d / 2), i = r % (d / 2)
        return head * d + 2 * i + half
    }
}
