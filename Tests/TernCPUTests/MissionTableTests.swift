import Testing
@testable import TernCPU

/// Every row of the two tables in MISSION.md §2, with real features standing for X, Y and Z.
@Suite struct MissionTableTests {
    let map: CPUMap
    init() throws { map = try CPUMap.builtin() }

    /// One row: the features of host A and host B beyond a common base.
    struct Row: Sendable, CustomTestStringConvertible {
        var a: [String]
        var b: [String]
        var aToB: Bool
        var bToA: Bool
        /// What the guest has in compatibility (pool) mode, beyond the base.
        var common: [String]
        var testDescription: String { "A{\(a.joined(separator: ","))} B{\(b.joined(separator: ","))}" }
    }

    /// X, Y, Z as letters, mapped to real feature names by each test.
    static let rows: [Row] = [
        Row(a: ["X", "Y", "Z"], b: ["X", "Y", "Z"], aToB: true, bToA: true, common: ["X", "Y", "Z"]),
        Row(a: ["X", "Y", "Z"], b: ["X", "Y"], aToB: false, bToA: true, common: ["X", "Y"]),
        Row(a: ["X", "Y"], b: ["X", "Y", "Z"], aToB: true, bToA: false, common: ["X", "Y"]),
        Row(a: ["X", "Y"], b: ["Y", "Z"], aToB: false, bToA: false, common: ["Y"]),
    ]

    /// Modern features outside the classic mask: AVX-512 VNNI, BF16 and VBMI on a Skylake-Server base.
    static let modern = ["X": "avx512vnni", "Y": "avx512-bf16", "Z": "avx512vbmi"]
    /// Modern features the classic mask does not reach (no AVX or XSAVE dependency): GFNI, RDPID, SHA.
    static let unmasked = ["X": "gfni", "Y": "rdpid", "Z": "sha-ni"]
    /// Features inside the classic Intel mask, on a Nehalem base that lacks them.
    static let masked = ["X": "ssse3", "Y": "sse4.1", "Z": "popcnt"]

    func hosts(_ row: Row, letters: [String: String], base: String) throws -> (ResolvedCPU, ResolvedCPU) {
        let all = Array(letters.values)
        let a = try map.cpu(base, plus: row.a.map { letters[$0]! }, minus: all.filter { !row.a.map { letters[$0]! }.contains($0) })
        let b = try map.cpu(base, plus: row.b.map { letters[$0]! }, minus: all.filter { !row.b.map { letters[$0]! }.contains($0) })
        return (a, b)
    }

    @Test("Without compatibility mode", arguments: rows)
    func withoutCompatibilityMode(row: Row) throws {
        let (a, b) = try hosts(row, letters: Self.modern, base: "Skylake-Server")
        let vmOnA = try map.guestCPU(.hostPassthrough, host: a)
        let vmOnB = try map.guestCPU(.hostPassthrough, host: b)
        let aToB = map.checkMigration(vm: vmOnA.resolved, destination: b)
        let bToA = map.checkMigration(vm: vmOnB.resolved, destination: a)
        #expect(aToB.allowed == row.aToB)
        #expect(bToA.allowed == row.bToA)
        // A refusal names exactly the features the destination lacks.
        if !aToB.allowed {
            let missing = Set(row.a).subtracting(row.b).map { Self.modern[$0]! }
            #expect(Set(aToB.missing) == Set(missing))
            #expect(aToB.reason?.contains(missing[0]) == true)
        }
    }

    @Test("Pool mode: every move succeeds and the guest has the common features", arguments: rows)
    func poolMode(row: Row) throws {
        let (a, b) = try hosts(row, letters: Self.modern, base: "Skylake-Server")
        let vmOnA = try map.guestCPU(.pool([a, b]), host: a)
        let vmOnB = try map.guestCPU(.pool([a, b]), host: b)
        #expect(vmOnA == vmOnB)
        #expect(map.checkMigration(vm: vmOnA.resolved, destination: b).allowed)
        #expect(map.checkMigration(vm: vmOnB.resolved, destination: a).allowed)
        let base = try map.cpu("Skylake-Server")
        let extra = map.names(vmOnA.resolved).subtracting(map.names(base))
        #expect(extra == Set(row.common.map { Self.modern[$0]! }))
    }

    @Test("Classic mode succeeds when X, Y, Z are inside its mask", arguments: rows)
    func classicModeInsideMask(row: Row) throws {
        let base = try map.cpu("Nehalem", minus: ["ssse3", "sse4.1", "sse4.2", "popcnt"])
        #expect(!base.features.isEmpty)
        let (a, b) = try hosts(row, letters: Self.masked, base: "Nehalem")
        let vmOnA = try map.guestCPU(.compatibility, host: a)
        let vmOnB = try map.guestCPU(.compatibility, host: b)
        #expect(map.checkMigration(vm: vmOnA.resolved, destination: b).allowed)
        #expect(map.checkMigration(vm: vmOnB.resolved, destination: a).allowed)
        for name in Self.masked.values { #expect(!map.names(vmOnA.resolved).contains(name)) }
    }

    @Test("Classic mode still refuses what its 2009 mask does not cover", arguments: rows)
    func classicModeOutsideMask(row: Row) throws {
        let (a, b) = try hosts(row, letters: Self.unmasked, base: "Skylake-Server")
        let vmOnA = try map.guestCPU(.compatibility, host: a)
        let vmOnB = try map.guestCPU(.compatibility, host: b)
        #expect(map.checkMigration(vm: vmOnA.resolved, destination: b).allowed == row.aToB)
        #expect(map.checkMigration(vm: vmOnB.resolved, destination: a).allowed == row.bToA)
        // AVX-512 differences, by contrast, vanish in classic mode: AVX is masked and AVX-512 needs it.
        let (c, d) = try hosts(row, letters: Self.modern, base: "Skylake-Server")
        let vmOnC = try map.guestCPU(.compatibility, host: c)
        #expect(map.checkMigration(vm: vmOnC.resolved, destination: d).allowed)
    }

    @Test func crossVendorIsAlwaysRefused() throws {
        let intel = try Fixture.dump("Xeon-Gold-6148", map: map).cpu
        let amd = try Fixture.dump("EPYC-7502-32-Core", map: map).cpu
        for config in [GuestCPUConfig.hostPassthrough, .compatibility] {
            let vm = try map.guestCPU(config, host: intel)
            let verdict = map.checkMigration(vm: vm.resolved, destination: amd)
            #expect(!verdict.allowed)
            #expect(verdict.reason?.contains("vendors") == true)
        }
        // A pool cannot span vendors either.
        #expect(throws: CPUError.mixedVendors(["Intel", "AMD"])) { try map.guestCPU(.pool([intel, amd]), host: intel) }
    }
}
