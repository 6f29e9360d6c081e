/// Finding stop strings in decoded text, and how much of a growing text is safe to stream.
public enum StopStrings {
    /// The text before the earliest stop string in `text`, if it holds one.
    public static func match(_ text: String, _ stops: [String]) -> String? {
        guard !stops.isEmpty else { return nil }
        var earliest: String.Index?
        for s in stops where !s.isEmpty {
            if let r = text.firstRange(of: s), earliest == nil || r.lowerBound < earliest! { earliest = r.lowerBound }
        }
        return earliest.map { String(text[..<$0]) }
    }

    /// How many leading characters of `text` can be sent now: not a trailing incomplete UTF-8
    /// sequence (decoded as U+FFFD) and not a tail that could be the start of a stop string.
    public static func safePrefix(_ text: String, _ stops: [String]) -> Int {
        var chars = Array(text)
        while chars.last == "\u{FFFD}" { chars.removeLast() }
        var keep = chars.count
        for s in stops where !s.isEmpty {
            let stop = Array(s)
            for n in stride(from: min(stop.count - 1, chars.count), to: 0, by: -1) where Array(chars.suffix(n)) == Array(stop.prefix(n)) {
                keep = min(keep, chars.count - n)
                break
            }
        }
        return keep
    }
}
