// swift-tools-version: 6.1
import Foundation
import PackageDescription

/// Release links of the two programs: lld, no symbols exported (nothing loads tern or ternd as a
/// library; with every Swift symbol exported the dynamic loader read megabytes of symbol tables
/// and relocations at each start) and relative relocations packed (DT_RELR). Measured with
/// Benchmarks/vm-start.sh: ternd's resident memory about 5 MiB lower, and faster starts. The
/// functions ternd runs are placed together first (scripts/code-layout: the kernel maps code 64 KiB
/// around each page touched, so scattered hot functions made most of the 23 MB of code resident;
/// with scripts/build-release.sh compiling every function into its own section, ternd's resident
/// memory with one VM fell from 29.4 to 25.9 MiB).
let releaseLink: [LinkerSetting] = [
    .unsafeFlags(
        [
            "-use-ld=lld",
            "-Xlinker", "--version-script=\(URL(fileURLWithPath: #filePath).deletingLastPathComponent().path)/scripts/release-exports.map",
            "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
            "-Xlinker", "--symbol-ordering-file=\(URL(fileURLWithPath: #filePath).deletingLastPathComponent().path)/scripts/code-layout/ternd.order",
            "-Xlinker", "--no-warn-symbol-ordering",
        ],
        .when(platforms: [.linux], configuration: .release)),
]

let package = Package(
    name: "Tern",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tern", targets: ["tern"]),
        .executable(name: "ternd", targets: ["ternd"]),
        .library(name: "TernCPU", targets: ["TernCPU"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        // Without its default traits: no swift-configuration, no URL-encoded forms (ternd speaks JSON).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0", traits: []),
    ],
    targets: [
        // C shim: the CPUID instruction and any host call Swift cannot import.
        .target(name: "CTernHost"),
        // Features, CPU models, libvirt <cpu> XML, QEMU -cpu syntax, compare, baseline,
        // compatibility and pool modes, the migration check. Pure Swift.
        .target(
            name: "TernCPU",
            exclude: ["README.md"],
            resources: [.copy("Resources/features.json"), .copy("Resources/models.json")]
        ),
        // Tern's save file format: header, checksums, the bounded validating reader.
        .target(name: "TernSaveFile", dependencies: ["CTernHost"], exclude: ["README.md"]),
        // Protocols for what Tern needs from any hypervisor, with Tern's own value types.
        .target(name: "TernHypervisor", dependencies: ["TernCPU"], exclude: ["README.md"]),
        // The QEMU backend: accelerator detection, command line, QMP client, guest CPU translation.
        .target(
            name: "TernQEMU",
            dependencies: [
                "TernCPU", "TernHypervisor", "CTernHost",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            exclude: ["README.md"]
        ),
        // One host: its capabilities (real CPU or a recorded one standing in for it).
        .target(
            name: "TernHost",
            dependencies: ["TernCPU", "TernHypervisor", "TernAPI", "TernSaveFile", "CTernHost", .product(name: "GRDB", package: "GRDB.swift")],
            exclude: ["README.md"]
        ),
        // The daemon's JSON types (shared with its clients).
        .target(
            name: "TernAPI",
            dependencies: [
                "TernHypervisor",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            exclude: ["README.md"]
        ),
        .executableTarget(
            name: "tern",
            dependencies: [
                "TernCPU", "TernHost", "TernHypervisor", "TernQEMU", "TernAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            linkerSettings: releaseLink
        ),
        .testTarget(name: "TernCPUTests", dependencies: ["TernCPU"], resources: [.copy("Fixtures")]),
        // The host daemon: the HTTP API (Hummingbird) in front of TernHost.
        .executableTarget(
            name: "ternd",
            dependencies: [
                "TernCPU", "TernHost", "TernSaveFile", "TernHypervisor", "TernQEMU", "TernAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            linkerSettings: releaseLink
        ),
        .testTarget(name: "TernHostTests", dependencies: ["TernHost", "TernCPU", "TernHypervisor"]),
        .testTarget(name: "TernAPITests", dependencies: ["TernAPI", "CTernHost"]),
        .testTarget(name: "TernSaveFileTests", dependencies: ["TernSaveFile", "CTernHost"]),
        .testTarget(
            name: "TernQEMUTests",
            dependencies: [
                "TernQEMU", "TernCPU", "TernHypervisor", "CTernHost", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Helpers for tests: running the built binaries, the test guest.
        .target(name: "TernTestSupport", dependencies: ["CTernHost"], path: "Sources/TernTestSupport"),
        // Runs the built `tern` as a user would.
        .testTarget(name: "TernCLITests", dependencies: ["tern", "TernTestSupport"]),
        // Boots real guests through `tern` and checks from inside them.
        .testTarget(name: "TernIntegrationTests", dependencies: ["tern", "TernCPU", "TernAPI", "TernHypervisor", "TernSaveFile", "TernTestSupport", "CTernHost"]),
    ]
)
