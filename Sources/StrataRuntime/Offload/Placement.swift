import StrataBackend
import StrataCore
import StrataFormats
import StrataModels

/// One layer tensor as the compute backend holds it: its byte image's size and the metadata
/// that turns bytes back into a `Tensor`.
struct TensorImage: Sendable {
    var spec: LayerTensorSpec
    var dtype: DType
    var quantization: QuantizationScheme?
    var byteCount: Int
    /// Byte offset of this tensor's slot in the layer image (slots are 4096-aligned).
    var slot: Int
    var slotBytes: Int { DiskFile.alignUp(byteCount) }
}

/// Where the bytes of one decoder layer live. The layer image is its tensors' slots in spec
/// order; bytes [0, device) stay on the device, [device, device + host) on the host, the rest
/// on disk. Split points are 4096-aligned but may fall inside a tensor, so a policy's
/// percentages are honoured to within 4 KiB per layer (FlexGen rounds whole tensors).
struct LayerPlacement: Sendable {
    var tensors: [TensorImage]
    var total: Int
    var device: Int
    var host: Int
    var disk: Int { total - device - host }

    init(tensors: [TensorImage], split: TierSplit) {
        self.tensors = tensors
        total = tensors.last.map { $0.slot + $0.slotBytes } ?? 0
        device = DiskFile.alignDown(Int(Double(total) * split.device / 100))
        host = DiskFile.alignDown(Int(Double(total) * (split.device + split.host) / 100)) - device
    }

    /// Start of the staged range: the slot start of the tensor that contains byte `device`, so
    /// staged tensors are contiguous even when one straddles the device boundary.
    var stagingStart: Int {
        guard device < total else { return total }
        return tensors.first { $0.slot + $0.slotBytes > device }!.slot
    }
    var stagingBytes: Int { total - stagingStart }
}

/// How the CPU backend would hold a checkpoint tensor: its dtype and quantization.
enum ImageFormat {
    static func image(spec: LayerTensorSpec, sourceDtype: DType, scheme: QuantizationScheme?, weightFormat: CPUBackend.WeightFormat,
                      slot: Int) -> TensorImage {
        let count = spec.shape.reduce(1, *)
        if spec.isMatrix, let scheme {
            let layout = QuantizedLayout(scheme: scheme, shape: spec.shape)
            return TensorImage(spec: spec, dtype: .u8, quantization: scheme, byteCount: layout.byteCount, slot: slot)
        }
        let dtype: DType = (spec.shape.count < 2 || weightFormat == .f32) ? .f32 : sourceDtype
        return TensorImage(spec: spec, dtype: dtype, quantization: nil, byteCount: count * dtype.byteSize, slot: slot)
    }

    static func layout(specs: [LayerTensorSpec], source: any TensorSource, scheme: QuantizationScheme?,
                       weightFormat: CPUBackend.WeightFormat, split: TierSplit) throws -> LayerPlacement {
        var slot = 0
        var images: [TensorImage] = []
        for spec in specs {
            let view = try source.require(spec.name, shape: spec.shape)
            let image = image(spec: spec, sourceDtype: view.dtype, scheme: scheme, weightFormat: weightFormat, slot: slot)
            images.append(image)
            slot += image.slotBytes
        }
        return LayerPlacement(tensors: images, split: split)
    }
}

/// Rows of each (layer, gpu batch) unit per tier, apportioned over all units together so the
/// totals match the policy's percentages to within one row.
struct RowApportion: Sendable {
    var device: [Int]
    var host: [Int]

    init(units: Int, rowsPerUnit: Int, split: TierSplit) {
        device = []
        host = []
        var givenDevice = 0, givenHost = 0
        for u in 1...max(units, 1) {
            let rows = u * rowsPerUnit
            let d = Int((Double(rows) * split.device / 100).rounded()) - givenDevice
            let h = min(rowsPerUnit - d, Int((Double(rows) * (split.device + split.host) / 100).rounded()) - givenDevice - d - givenHost)
            device.append(d)
            host.append(max(0, h))
            givenDevice += d
            givenHost += max(0, h)
        }
    }

    func parts(_ unit: Int, rows: Int) -> (device: Range<Int>, host: Range<Int>, disk: Range<Int>) {
        let d = device[unit], h = host[unit]
        return (0..<d, d..<(d + h), (d + h)..<rows)
    }
}
