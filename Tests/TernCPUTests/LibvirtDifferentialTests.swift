import Foundation
import Testing
@testable import TernCPU

/// Differential test against real libvirt: random pools of real CPU models with features added
/// and removed, baselined by `virsh cpu-baseline` (libvirt's test driver, which runs libvirt's
/// own x86 CPU code with its cpu_map) and by Tern.
///
/// With libvirt's cpu_map Tern must print the very same XML (model names, features, order). With
/// Tern's own map (whose models are QEMU's, and differ from libvirt's files of the same name) the
/// same hosts are given as plain feature lists; the model names may then differ, but the
/// features must be the same set.
/// `TERN_DIFF_CASES` sets the number of cases (default 120); the agreement rate is printed.
@Suite(.serialized) struct LibvirtDifferentialTests {
    let libvirt: CPUMap
    let builtin: CPUMap
    init() throws {
        libvirt = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        builtin = try CPUMap.builtin()
    }

    /// A small deterministic generator (SplitMix64), so a failing case can be reproduced.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    struct Case {
        var xml: String
        var expandFeatures: Bool
    }

    func makeCase(_ rng: inout Generator) -> Case {
        var vendor = ["Intel", "AMD"].randomElement(using: &rng)!
        // One case in ten mixes vendors, which both must refuse (or, where libvirt's rules let
        // it through, answer alike).
        let mixed = Int.random(in: 0..<10, using: &rng) == 0
        let count = Int.random(in: 1...4, using: &rng)
        let withVendor = Bool.random(using: &rng)
        var xml = ""
        for _ in 0..<count {
            if mixed { vendor = ["Intel", "AMD"].randomElement(using: &rng)! }
            let candidates = libvirt.models.filter { $0.vendor == vendor && $0.decodeHost }
            let model = candidates.randomElement(using: &rng)!
            var features = Set<String>()
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                features.insert(libvirt.registry.features.randomElement(using: &rng)!.name)
            }
            let own = libvirt.registry.names(of: model.features)
            // A host description cannot take a feature away from its model, so a host that lacks
            // some of its model's features is written as an explicit list on `486` (whose three
            // features every generated host keeps).
            let base = Set(libvirt.registry.names(of: libvirt.model(named: "486")!.features))
            var removed = Set<String>()
            for _ in 0..<Int.random(in: 0...3, using: &rng) {
                if let name = own.randomElement(using: &rng), !base.contains(name) { removed.insert(name) }
            }
            if removed.isEmpty {
                xml += "<cpu>\n  <arch>x86_64</arch>\n  <model>\(model.name)</model>\n"
            } else {
                xml += "<cpu>\n  <arch>x86_64</arch>\n  <model>486</model>\n"
                features.formUnion(own)
                features.subtract(removed)
                features.subtract(base)
            }
            if withVendor { xml += "  <vendor>\(vendor)</vendor>\n" }
            for name in features.sorted() { xml += "  <feature name='\(name)'/>\n" }
            xml += "</cpu>\n"
        }
        return Case(xml: xml, expandFeatures: Bool.random(using: &rng))
    }

    func virshBaseline(_ file: String, expand: Bool) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/virsh")
        process.arguments = ["-q", "-c", "test:///default", "cpu-baseline", file] + (expand ? ["--features"] : [])
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let error = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output, error)
    }

    /// The same hosts as plain feature lists with no model (which Tern accepts and libvirt does not).
    func neutral(_ cpus: [CPUDefinition]) throws -> [CPUDefinition] {
        try cpus.map { cpu in
            let names = libvirt.registry.names(of: try libvirt.resolve(cpu).features)
            return CPUDefinition(
                kind: .host, arch: "x86_64", model: nil, vendor: cpu.vendor, features: names.map { .init(name: $0, policy: nil) })
        }
    }

    @Test func baselineAgreesWithVirsh() throws {
        let total = ProcessInfo.processInfo.environment["TERN_DIFF_CASES"].flatMap(Int.init) ?? 120
        var rng = Generator(state: 20_261_121)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tern-diff-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        var sameText = 0, sameSet = 0, comparable = 0, builtinSame = 0, errorsBoth = 0
        for index in 0..<total {
            let testCase = makeCase(&rng)
            let file = directory.appendingPathComponent("case-\(index).xml").path
            try testCase.xml.write(toFile: file, atomically: true, encoding: .utf8)
            let virsh = try virshBaseline(file, expand: testCase.expandFeatures)
            let cpus = try CPUDefinition.all(xml: testCase.xml, source: file)
            guard virsh.status == 0 else {
                // libvirt refused (e.g. a vendor conflict); Tern must refuse too.
                let refused = cpuError { _ = try libvirt.baseline(cpus, expandFeatures: testCase.expandFeatures) } != nil
                #expect(refused, "libvirt refused case \(index) (\(virsh.err)) but Tern did not:\n\(testCase.xml)")
                if refused { errorsBoth += 1 }
                continue
            }
            let tern = try libvirt.baseline(cpus, expandFeatures: testCase.expandFeatures)
            let virshText = virsh.out.trimmingCharacters(in: .whitespacesAndNewlines)
            let ternText = tern.xml().trimmingCharacters(in: .whitespacesAndNewlines)
            if virshText == ternText { sameText += 1 }
            #expect(virshText == ternText, "case \(index):\n\(testCase.xml)\nvirsh:\n\(virshText)\ntern:\n\(ternText)")
            let virshCPU = try CPUDefinition(xml: virsh.out)
            let virshSet = try libvirt.resolve(virshCPU).features
            if try libvirt.resolve(tern).features == virshSet { sameSet += 1 }
            do {
                comparable += 1
                let ours = try builtin.baseline(neutral(cpus), expandFeatures: testCase.expandFeatures)
                let ourNames = Set(builtin.registry.names(of: try builtin.resolve(ours).features))
                let theirNames = Set(libvirt.registry.names(of: virshSet))
                if ourNames == theirNames { builtinSame += 1 }
                #expect(ourNames == theirNames, "case \(index) with Tern's own map:\n\(testCase.xml)")
            }
        }
        let answered = total - errorsBoth
        print(
            "libvirt differential: \(total) cases; refused by both: \(errorsBoth); "
                + "same XML with libvirt's cpu_map: \(sameText)/\(answered); same features: \(sameSet)/\(answered); "
                + "same features with Tern's own map: \(builtinSame)/\(comparable)")
    }
}
