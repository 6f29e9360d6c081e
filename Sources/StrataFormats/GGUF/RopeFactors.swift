#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import StrataCore

/// Llama 3.1/3.2 GGUF files carry RoPE scaling as `rope_freqs.weight`: one divisor per
/// frequency, computed by llama.cpp's converter from the checkpoint's `rope_scaling` (llama3:
/// factor, low/high frequency factors, original context). Strata recovers those parameters, so
/// the derived config.json is the Hugging Face one, and accepts them only if they reproduce
/// every divisor in the file.
enum RopeFactors {
    /// The llama3 divisors for `parameters` (what llama.cpp writes).
    static func divisors(theta: Double, headDim: Int, factor: Double, low: Double, high: Double, original: Double) -> [Double] {
        (0..<(headDim / 2)).map { i in
            let frequency = 1 / pow(theta, Double(2 * i) / Double(headDim))
            let wavelength = 2 * Double.pi / frequency
            if wavelength < original / high { return 1 }
            if wavelength > original / low { return factor }
            let smooth = (original / wavelength - low) / (high - low)
            return 1 / ((1 - smooth) / factor + smooth)
        }
    }

    /// `rope_scaling` (llama3) whose divisors equal `factors` within 1e-4, or nil when they are
    /// all 1. Throws naming the tensor when no llama3 parameters reproduce them.
    static func llama3Scaling(_ factors: [Double], theta: Double, headDim: Int, path: String) throws -> [String: JSONValue]? {
        func refuse(_ why: String) -> StrataError {
            .invalidFile(path: path, detail: "tensor 'rope_freqs.weight': \(why)")
        }
        guard factors.count == headDim / 2 else { throw refuse("has \(factors.count) values for \(headDim / 2) frequencies") }
        guard factors.allSatisfy({ $0.isFinite && $0 > 0 }) else { throw refuse("values must be positive and finite") }
        let factor = factors.max()!
        if factor <= 1 + 1e-6 { return nil }
        let wavelengths = (0..<(headDim / 2)).map { 2 * Double.pi * pow(theta, Double(2 * $0) / Double(headDim)) }
        // Points in the smooth band: 1/f = (1 - s)/factor + s with s linear in 1/wavelength,
        // s = (original/wavelength - low) / (high - low). Llama 3 uses low = 1.
        let low = 1.0
        var high = 4.0, original = 8192.0
        let smooth = factors.indices.filter { factors[$0] > 1 + 1e-5 && factors[$0] < factor * (1 - 1e-5) }
        if smooth.count >= 2 {
            let (i, j) = (smooth.first!, smooth.last!)
            func s(_ k: Int) -> Double { (1 / factors[k] - 1 / factor) / (1 - 1 / factor) }
            let a = (s(j) - s(i)) / (1 / wavelengths[j] - 1 / wavelengths[i])
            let b = s(i) - a / wavelengths[i]
            guard b < 0 else { throw refuse("the smooth band does not fit llama3 scaling") }
            high = low - low / b
            original = (-a / b).rounded()
        } else if smooth.count == 1 {
            // One point in the band: with Llama 3's high = 4 it fixes the original context.
            let k = smooth[0]
            let band = (1 / factors[k] - 1 / factor) / (1 - 1 / factor)
            original = (wavelengths[k] * (band * (high - low) + low)).rounded()
        } else {
            // No band: any original context with every unscaled wavelength below original/high
            // and every fully scaled one above original reproduces the divisors; the smallest
            // power of two that does is what checkpoints use.
            let unscaled = factors.indices.filter { factors[$0] <= 1 + 1e-5 }.map { wavelengths[$0] }.max() ?? 0
            original = 1
            while original <= unscaled * high { original *= 2 }
        }
        let rebuilt = divisors(theta: theta, headDim: headDim, factor: factor, low: low, high: high, original: original)
        guard zip(rebuilt, factors).allSatisfy({ abs($0 - $1) <= 1e-4 * $1 }) else {
            throw refuse("the per-frequency factors are not llama3 scaling Strata can reproduce")
        }
        return ["rope_type": .string("llama3"), "factor": .number(factor), "low_freq_factor": .number(low),
                "high_freq_factor": .number(high), "original_max_position_embeddings": .number(original)]
    }
}
