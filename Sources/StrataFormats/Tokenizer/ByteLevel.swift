/// GPT-2's reversible map from bytes to printable Unicode characters: printable Latin-1 bytes
/// map to themselves, the rest to U+0100 onwards, so every byte string is a visible string.
public enum ByteLevel {
    static let byteToScalar: [Unicode.Scalar] = {
        let printable = Set(Array(33...126) + Array(161...172) + Array(174...255))
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var extra = 0
        for b in 0..<256 {
            if printable.contains(b) {
                table[b] = Unicode.Scalar(UInt32(b))!
            } else {
                table[b] = Unicode.Scalar(UInt32(256 + extra))!
                extra += 1
            }
        }
        return table
    }()

    public static let byteToString: [String] = byteToScalar.map { String(Character($0)) }

    static let scalarToByte: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { map[s.value] = UInt8(b) }
        return map
    }()

    /// The byte-level string for raw bytes.
    static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(byteToScalar[Int(b)]) }
        return String(s)
    }

    /// The raw bytes of a byte-level token string; characters outside the alphabet are kept as
    /// their own UTF-8 (added tokens such as `</s>` are plain text).
    static func decode(_ token: String, into out: inout [UInt8]) {
        for s in token.unicodeScalars {
            if let b = scalarToByte[s.value] { out.append(b) } else { out.append(contentsOf: String(s).utf8) }
        }
    }
}
