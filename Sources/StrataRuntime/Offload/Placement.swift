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
        let total = Self.imageBytes(tensors)
        self.total = total
        // A share within 1e-9 of whole is whole: percentages from an LP's fractions may sum to
        // 99.99999999999999, which must not leave a 4 KiB tail on a slower tier.
        func boundary(_ percent: Double) -> Int {
            percent >= 100 - 1e-9 ? total : DiskFile.alignDown(Int(Double(total) * percent / 100))
        }
        device = boundary(split.device)
        host = boundary(split.device + split.host) - device
    }

    /// Bytes of a layer image: the end of its last tensor's slot.
    static func imageBytes(_ tensors: [TensorImage]) -> Int { tensors.last.map { $0.slot + $0.slotBytes } ?? 0 }

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
        let dtype = weightFormat.heldType(stored: sourceDtype, shape: spec.shape)
        return TensorImage(spec: spec, dtype: dtype, quantization: nil, byteCount: count * dtype.byteSize, slot: slot)
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
