#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import StrataFormats

/// Rotary position embedding frequencies (rotate-half convention, as transformers), with
/// Llama-3 frequency-dependent scaling or linear scaling.
struct Rotary: Sendable {
    let inverseFrequencies: [Float]

    init(config c: ModelConfig) {
        let d = c.headDim
        var inv = (0..<(d / 2)).map { i in Float(1.0 / pow(c.ropeTheta, Double(2 * i) / Double(d))) }
        if let s = c.ropeScaling {
            switch s.kind {
            case .linear:
                inv = inv.map { $0 / Float(s.factor) }
            case .llama3:
                let old = Double(s.originalMaxPositions)
                let lowWavelength = old / s.lowFreqFactor
                let highWavelength = old / s.highFreqFactor
                inv = inv.map { f in
                    let wavelength = 2 * Double.pi / Double(f)
                    if wavelength < highWavelength { return f }
                    if wavelength > lowWavelength { return f / Float(s.factor) }
                    let smooth = (old / wavelength - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
                    return Float((1 - smooth) * Double(f) / s.factor + smooth * Double(f))
                }
            }
        }
        inverseFrequencies = inv
    }

    /// cos and sin tables [positions.count, headDim / 2]; padding (-1) uses position 1 as
    /// transformers does (the values never reach a real token).
    func tables(positions: [Int]) -> (cos: [Float], sin: [Float]) {
        let half = inverseFrequencies.count
        var cosTable = [Float](repeating: 0, count: positions.count * half)
        var sinTable = cosTable
        for (r, p) in positions.enumerated() {
            let position = Float(p >= 0 ? p : 1)
            for i in 0..<half {
                let angle = position * inverseFrequencies[i]
                cosTable[r * half + i] = cosf(angle)
                sinTable[r * half + i] = sinf(angle)
            }
        }
        return (cosTable, sinTable)
    }
}
