// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Tern",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tern", targets: ["tern"]),
        .library(name: "TernCPU", targets: ["TernCPU"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C shim: the CPUID instruction and any host call Swift cannot import.
        .target(name: "CTernHost"),
        // Features, CPU models, libvirt <cpu> XML, QEMU -cpu syntax, compare, baseline,
        // compatibility and pool modes, the migration check. Pure Swift.
        .target(
            name: "TernCPU",
            resources: [.copy("Resources/features.json"), .copy("Resources/models.json")]
        ),
        // One host: its capabilities (real CPU or a recorded one standing in for it).
        .target(name: "TernHost", dependencies: ["TernCPU", "CTernHost"]),
        .executableTarget(
            name: "tern",
            dependencies: [
                "TernCPU", "TernHost",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "TernCPUTests", dependencies: ["TernCPU"], resources: [.copy("Fixtures")]),
        // Runs the built `tern` as a user would.
        .testTarget(name: "TernCLITests", dependencies: ["tern"]),
    ]
)
