import ArgumentParser
import DatabaseDumps

/// `-d/--db-type` everywhere: the names DatabaseEngine(name:) reads (postgres,
/// postgresql, pg, mysql, mariadb, ...), so backup and restore accept the same ones.
extension DatabaseEngine: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }

    public static var allValueStrings: [String] { allCases.map(\.rawValue) }

    public var defaultValueDescription: String { rawValue }

    /// For help texts: "postgres (or postgresql, pg, pgsql), mysql, mariadb (or maria)".
    static var helpList: String {
        allCases.map { e in
            let aliases = e.names.dropFirst()
            return aliases.isEmpty ? e.rawValue : "\(e.rawValue) (or \(aliases.joined(separator: ", ")))"
        }.joined(separator: ", ")
    }
}
