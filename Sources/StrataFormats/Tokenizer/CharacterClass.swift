/// Unicode classes used by the tokenizer split patterns (`\p{L}`, `\p{N}`, `\s`), decided per
/// Unicode scalar as the Rust `tokenizers` regex engines do (not per grapheme cluster).
/// ASCII is answered from a table because it dominates real text.
enum CharacterClass: UInt8 {
    case letter, number, whitespace, other

    private static let ascii: [CharacterClass] = (0..<128).map { i in
        let s = Unicode.Scalar(UInt8(i))
        if (i >= 65 && i <= 90) || (i >= 97 && i <= 122) { return .letter }
        if i >= 48 && i <= 57 { return .number }
        if s.properties.isWhitespace { return .whitespace }
        return .other
    }

    @inline(__always)
    static func of(_ scalar: UInt32) -> CharacterClass {
        if scalar < 128 { return ascii[Int(scalar)] }
        guard let s = Unicode.Scalar(scalar) else { return .other }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return s.properties.isWhitespace ? .whitespace : .other
        }
    }
}

/// A UTF-8 text decoded once into scalars with their byte offsets, so split patterns can scan
/// scalars while pieces stay byte ranges of the original text (no String per piece).
struct ScalarText {
    var bytes: [UInt8]
    /// scalar values
    var scalars: [UInt32] = []
    /// byte offset of each scalar; one extra entry holds bytes.count
    var offsets: [Int] = []
    var classes: [CharacterClass] = []

    init<S: Sequence>(utf8 bytes: S) where S.Element == UInt8 {
        self.bytes = Array(bytes)
        scalars.reserveCapacity(self.bytes.count)
        offsets.reserveCapacity(self.bytes.count + 1)
        classes.reserveCapacity(self.bytes.count)
        var i = 0
        let b = self.bytes
        while i < b.count {
            let lead = b[i]
            var value: UInt32
            var length: Int
            if lead < 0x80 { value = UInt32(lead); length = 1 }
            else if lead >> 5 == 0b110 { value = UInt32(lead & 0x1F); length = 2 }
            else if lead >> 4 == 0b1110 { value = UInt32(lead & 0x0F); length = 3 }
            else { value = UInt32(lead & 0x07); length = 4 }
            if i + length > b.count { length = b.count - i }
            for k in 1..<max(length, 1) { value = (value << 6) | UInt32(b[i + k] & 0x3F) }
            scalars.append(value)
            offsets.append(i)
            classes.append(CharacterClass.of(value))
            i += length
        }
        offsets.append(b.count)
    }

    var count: Int { scalars.count }
}
