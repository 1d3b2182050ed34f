// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "dbbackup",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "dbbackup", targets: ["dbbackup"]),
        .library(name: "DedupStore", targets: ["DedupStore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
    ],
    targets: [
        // C libraries from Debian's -dev packages, one system-library target each.
        .systemLibrary(name: "CLinux"),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CLMDB", pkgConfig: "lmdb", providers: [.apt(["liblmdb-dev"])]),
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CMariaDB", pkgConfig: "libmariadb", providers: [.apt(["libmariadb-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),

        // Vector kernels of hex packing (SSE2), in C: Swift's SIMD types do not
        // compile to vector code here.
        .target(name: "CHexCodec"),

        // The content-addressed chunk store. Knows nothing about databases.
        .target(
            name: "DedupStore",
            dependencies: ["CLinux", "CZstd", "CCrypto", "CLMDB", "CHexCodec"]
        ),
        // S3-compatible object storage: signed requests (AWS Signature Version 4)
        // over async-http-client.
        .target(
            name: "S3Store",
            dependencies: [
                "DedupStore", .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Talking to database servers (libpq) and running their dump tools.
        .target(
            name: "DatabaseDumps",
            dependencies: ["DedupStore", "CLibPQ", "CMariaDB"]
        ),
        // The SQLite catalog of backups (a local, rebuildable view of the manifests),
        // and the Prometheus metrics made from it.
        .target(
            name: "Catalog",
            dependencies: ["DedupStore", "CSQLite"]
        ),
        // The command-line interface: parsing, progress, output.
        .executableTarget(
            name: "dbbackup",
            dependencies: [
                "DedupStore",
                "DatabaseDumps",
                "Catalog",
                "S3Store",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Release-build benchmark of each stage (tools/bench runs it).
        .executableTarget(
            name: "dbbackup-bench",
            dependencies: ["DedupStore"]
        ),
        // Builds large repositories quickly for the scale measurements (tools/bench-scale).
        .executableTarget(
            name: "dbbackup-gen",
            dependencies: ["DedupStore"]
        ),
        // A huge generated dump through stdin, a counter on a restore's stdout, and
        // a memory watch (tools/bench-stream).
        .executableTarget(
            name: "dbbackup-stream",
            dependencies: ["CLinux"]
        ),
        .testTarget(
            name: "DedupStoreTests",
            dependencies: ["DedupStore", "S3Store"]
        ),
        .testTarget(
            name: "S3StoreTests",
            dependencies: ["S3Store", "DedupStore", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "CatalogTests",
            dependencies: ["Catalog", "DedupStore"]
        ),
        .testTarget(
            name: "DatabaseDumpsTests",
            dependencies: ["DatabaseDumps", "DedupStore"]
        ),
        .testTarget(
            name: "CLITests",
            dependencies: ["DedupStore", "DatabaseDumps", "S3Store", "dbbackup"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
