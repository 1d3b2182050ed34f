import ArgumentParser
import DatabaseDumps
import DedupStore

/// `-d/--db-type` everywhere: the names DatabaseEngine(name:) reads (postgres,
/// postgresql, pg, mysql, mariadb, ...), so backup and restore accept the same ones.
extension DatabaseEngine: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }

    public static var allValueStrings: [String] { allCases.map(\.rawValue) }

    public var defaultValueDescription: String { rawValue }

    /// For help texts (which list the raw values themselves): "postgresql, pg and
    /// pgsql mean postgres; maria means mariadb".
    static var aliasHelp: String {
        allCases.compactMap { e -> String? in
            let aliases = Array(e.names.dropFirst())
            guard let last = aliases.last else { return nil }
            let list = aliases.count == 1 ? last : aliases.dropLast().joined(separator: ", ") + " and " + last
            return "\(list) \(aliases.count == 1 ? "means" : "mean") \(e.rawValue)"
        }.joined(separator: "; ")
    }
}

extension BackupKind: ExpressibleByArgument {}
