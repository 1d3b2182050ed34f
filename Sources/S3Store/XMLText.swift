/// The little XML the S3 API answers with, read and written as text: the value
/// of an element, the elements of a list, and escaping. Answers are flat enough
/// (ListObjectsV2, ListMultipartUploads, errors) that no parser is needed.
enum XMLText {
    /// The unescaped text of the first `<name>` element of an answer's body.
    static func value(_ name: String, in body: [UInt8]) -> String? {
        value(name, in: String(decoding: body, as: UTF8.self)[...])
    }

    /// The unescaped text of the first `<name>` element of `text`.
    static func value(_ name: String, in text: Substring) -> String? {
        guard let a = text.range(of: "<\(name)>"), let b = text.range(of: "</\(name)>", range: a.upperBound..<text.endIndex)
        else { return nil }
        return unescape(text[a.upperBound..<b.lowerBound])
    }

    /// The contents of every `<name>` element of `text`, in order.
    static func elements(_ name: String, in text: String) -> [Substring] {
        var out = [Substring]()
        var rest = text[...]
        while let a = rest.range(of: "<\(name)>"), let b = rest.range(of: "</\(name)>", range: a.upperBound..<rest.endIndex) {
            out.append(rest[a.upperBound..<b.lowerBound])
            rest = rest[b.upperBound...]
        }
        return out
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// XML's five entities and numeric character references.
    static func unescape(_ s: Substring) -> String {
        guard s.contains("&") else { return String(s) }
        var out = ""
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == "&", let semi = s[i...].firstIndex(of: ";") {
                let name = s[s.index(after: i)..<semi]
                var scalar: Unicode.Scalar?
                switch name {
                case "amp": scalar = "&"
                case "lt": scalar = "<"
                case "gt": scalar = ">"
                case "quot": scalar = "\""
                case "apos": scalar = "'"
                default:
                    if name.hasPrefix("#x") {
                        scalar = UInt32(name.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                    } else if name.hasPrefix("#") {
                        scalar = UInt32(name.dropFirst()).flatMap(Unicode.Scalar.init)
                    }
                }
                if let scalar {
                    out.unicodeScalars.append(scalar)
                    i = s.index(after: semi)
                    continue
                }
            }
            out.append(s[i])
            i = s.index(after: i)
        }
        return out
    }
}
