import Testing
@testable import TernCPU

@Suite struct CompareTests {
    let map: CPUMap
    let host: ResolvedCPU
    init() throws {
        map = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        host = try Fixture.dump("Xeon-Gold-6148", map: map).cpu
    }

    func compare(_ xml: String) throws -> CPUComparison { try map.compare(host: host, cpu: CPUDefinition(xml: xml)) }

    // Expected answers are libvirt 9.0's for the same host and input.
    @Test func matchModes() throws {
        #expect(try compare("<cpu match='minimum'><model>Skylake-Server</model></cpu>").result == .superset)
        #expect(try compare("<cpu match='exact'><model>Skylake-Server</model></cpu>").result == .superset)
        let strict = try compare("<cpu match='strict'><model>Skylake-Server</model></cpu>")
        #expect(strict.result == .incompatible)
        #expect(strict.extra.count == 24)
        #expect(strict.reason?.hasPrefix("Host CPU does not strictly match guest CPU: Extra features: ") == true)
    }

    @Test func missingFeaturesAreNamed() throws {
        let result = try compare("<cpu><model>Cascadelake-Server</model><feature name='vmx'/></cpu>")
        #expect(result.result == .incompatible)
        #expect(result.missing == ["avx512vnni", "spec-ctrl", "ssbd"])
        #expect(result.reason == "Host CPU does not provide required features: avx512vnni, spec-ctrl, ssbd")
    }

    @Test func forceIsNotCheckedAndForbidIs() throws {
        let forced = try compare(
            "<cpu><model>Cascadelake-Server</model><feature policy='force' name='avx512vnni'/><feature policy='disable' name='spec-ctrl'/><feature policy='optional' name='ssbd'/></cpu>")
        #expect(forced.result == .superset)
        let forbidden = try compare("<cpu><model>Skylake-Server</model><feature policy='forbid' name='vmx'/></cpu>")
        #expect(forbidden.result == .incompatible)
        #expect(forbidden.forbidden == ["vmx"])
    }

    @Test func identicalWhenTheDescriptionIsTheHost() throws {
        let description = try map.describe(host, kind: .host)
        var hostXML = description
        hostXML.arch = "x86_64"
        #expect(try map.compare(host: host, cpu: hostXML).result == .identical)
        var strict = try map.describe(host, kind: .guest)
        strict.match = .strict
        #expect(try map.compare(host: host, cpu: strict).result == .identical)
    }

    @Test func vendorAndArchMismatches() throws {
        let vendor = try compare("<cpu><model>EPYC</model><vendor>AMD</vendor></cpu>")
        #expect(vendor.result == .incompatible)
        #expect(vendor.reason == "host CPU vendor Intel does not match required CPU vendor AMD")
        let arch = try compare("<cpu><arch>ppc64</arch><model>Skylake-Server</model></cpu>")
        #expect(arch.result == .incompatible)
    }

    @Test func unknownNamesAreErrorsNotIncompatibility() throws {
        #expect(throws: CPUError.self) { try compare("<cpu><model>Skylake-Sever</model></cpu>") }
        #expect(throws: CPUError.self) { try compare("<cpu><model>Skylake-Server</model><feature policy='optional' name='avx1024'/></cpu>") }
    }
}

@Suite struct HostDecodeTests {
    /// The model libvirt 9.0 picks for each recorded processor (its capabilities <model>).
    static let libvirtModels: [(String, String)] = [
        ("Core-i7-2600", "SandyBridge"), ("EPYC-7502-32-Core", "EPYC-Rome"), ("EPYC-7601-32-Core", "EPYC"),
        ("Hygon-C86-7185-32-core", "Dhyana"), ("Ice-Lake-Server", "Icelake-Server"), ("Opteron-6234", "Opteron_G4"),
        ("Phenom-B95", "athlon"), ("Xeon-Gold-6148", "Skylake-Server"), ("Xeon-Platinum-8268", "Cascadelake-Server"),
    ]

    @Test(arguments: libvirtModels)
    func picksLibvirtsModelWithLibvirtsMap(dump: String, model: String) throws {
        let map = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        let host = try Fixture.dump(dump, map: map)
        let description = try map.describe(host.cpu, kind: .host)
        #expect(description.model == model)
        // Model + listed features is exactly the host.
        #expect(try map.resolve(description).features == host.cpu.features)
        #expect(description.features.allSatisfy { $0.policy == nil })
    }

    @Test(arguments: Fixture.dumpNames)
    func describesEveryDumpWithTernsOwnMap(dump: String) throws {
        let map = try CPUMap.builtin()
        let host = try Fixture.dump(dump, map: map)
        let description = try map.describe(host.cpu, kind: .host)
        #expect(try map.resolve(description).features == host.cpu.features)
        #expect(description.vendor == host.cpu.vendor)
        #expect(host.cpu.vendor != nil)
    }

    @Test func libvirtMapErrorsAreClear() {
        #expect(throws: CPUError.self) { try CPUMap.libvirt(directory: "/nonexistent") }
    }
}
