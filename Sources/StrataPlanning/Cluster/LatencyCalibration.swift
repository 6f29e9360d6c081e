import StrataCore

/// Per-layer latencies fitted to measurements with LLM-PQ's regression features, per (device
/// type, bits, phase): prefill [b, s, b*s, b*s^2, 1] for a micro-batch of b sequences of s
/// tokens; decode [b*(s+i), b, i, 1] for b sequences at i tokens past a prompt of s. A spec's
/// `calibration:` file lists samples; groups with fewer samples than features keep the
/// analytic model. Samples of phase `head` time rank 0's LM head for b rows (features [b, 1]).
///
///     {"samples": [{"device": "t4", "bits": 16, "phase": "prefill", "batch": 8, "prompt_len": 512, "seconds": 0.31},
///                  {"device": "t4", "bits": 16, "phase": "decode", "batch": 8, "prompt_len": 512, "generated": 10, "seconds": 0.004}]}
public struct LatencyCalibration: Sendable {
    struct Key: Hashable { var device: String; var bits: Int; var prefill: Bool }
    var coefficients: [Key: [Double]] = [:]
    /// Per device type: the LM head's seconds for b rows, [per row, fixed].
    var head: [String: [Double]] = [:]

    public init(path: String) throws {
        let f = try JSONFields(JSONValue.load(path: path), path: path)
        guard let list = f.object["samples"]?.array else { throw f.missing("samples") }
        var groups: [Key: (x: [[Double]], y: [Double])] = [:]
        var headSamples: [String: (x: [[Double]], y: [Double])] = [:]
        for (i, item) in list.enumerated() {
            let s = try JSONFields(item, path: path + " (samples[\(i)])")
            let phase = try s.string("phase")
            guard ["prefill", "decode", "head"].contains(phase) else { throw s.wrong("phase", "'prefill', 'decode' or 'head'") }
            if phase == "head" {
                headSamples[try s.string("device").lowercased(), default: ([], [])].x.append([Double(try s.int("batch")), 1])
                headSamples[try s.string("device").lowercased(), default: ([], [])].y.append(try s.double("seconds"))
                continue
            }
            let key = Key(device: try s.string("device").lowercased(), bits: try s.int("bits"), prefill: phase == "prefill")
            let x = Self.features(prefill: key.prefill, batch: Double(try s.int("batch")), prompt: Double(try s.int("prompt_len")),
                                  generated: Double(try s.int("generated", default: 0)))
            groups[key, default: ([], [])].x.append(x)
            groups[key, default: ([], [])].y.append(try s.double("seconds"))
        }
        for (key, data) in groups where data.x.count >= data.x[0].count {
            coefficients[key] = Self.leastSquares(data.x, data.y)
        }
        for (device, data) in headSamples where data.x.count >= 2 { head[device] = Self.leastSquares(data.x, data.y) }
    }

    public init() {}

    static func features(prefill: Bool, batch b: Double, prompt s: Double, generated i: Double) -> [Double] {
        prefill ? [b, s, b * s, b * s * s, 1] : [b * (s + i), b, i, 1]
    }

    /// Fitted seconds, or nil when this (device, bits, phase) has no fit.
    public func latency(device: String, bits: Int, prefill: Bool, batch: Int, prompt: Int, generated: Double) -> Double? {
        guard let c = coefficients[Key(device: device, bits: bits, prefill: prefill)] else { return nil }
        let x = Self.features(prefill: prefill, batch: Double(batch), prompt: Double(prompt), generated: generated)
        return max(0, zip(c, x).reduce(0) { $0 + $1.0 * $1.1 })
    }

    /// Fitted seconds of the LM head for `batch` rows, or nil without head samples.
    public func headLatency(device: String, batch: Int) -> Double? {
        guard let c = head[device] else { return nil }
        return max(0, c[0] * Double(batch) + c[1])
    }

    /// Ordinary least squares through the normal equations (a tiny ridge keeps collinear
    /// feature sets, e.g. one batch size only, solvable).
    static func leastSquares(_ x: [[Double]], _ y: [Double]) -> [Double] {
        let n = x[0].count
        var a = [[Double]](repeating: [Double](repeating: 0, count: n + 1), count: n)
        for (row, target) in zip(x, y) {
            for i in 0..<n {
                for j in 0..<n { a[i][j] += row[i] * row[j] }
                a[i][n] += row[i] * target
            }
        }
        for i in 0..<n { a[i][i] += 1e-12 * max(1, a[i][i]) }
        for col in 0..<n {
            let pivot = (col..<n).max { abs(a[$0][col]) < abs(a[$1][col]) }!
            a.swapAt(col, pivot)
            guard abs(a[col][col]) > 0 else { continue }
            for r in 0..<n where r != col {
                let factor = a[r][col] / a[col][col]
                for c in col...n { a[r][c] -= factor * a[col][c] }
            }
        }
        return (0..<n).map { abs(a[$0][$0]) > 0 ? a[$0][n] / a[$0][$0] : 0 }
    }
}
