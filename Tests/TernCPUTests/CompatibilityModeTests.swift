import Testing
@testable import TernCPU

@Suite struct CompatibilityModeTests {
    let map: CPUMap
    init() throws { map = try CPUMap.builtin() }

    @Test func intelMaskWithholdsExactlyTheMissionsFeaturesAndTheirDependents() throws {
        let host = try Fixture.dump("Ice-Lake-Server", map: map)
        let guest = try map.guestCPU(.compatibility, host: host.cpu)
        let names = map.names(guest.resolved)
        for withheld in ["ssse3", "sse4.1", "sse4.2", "popcnt", "misalignsse", "xsave", "avx"] {
            #expect(!names.contains(withheld), "\(withheld)")
        }
        // Dependents of XSAVE and AVX go too; everything else stays.
        for dependent in ["avx2", "avx512f", "xsaveopt", "fma"] { #expect(!names.contains(dependent)) }
        let kept = map.names(host.cpu).subtracting(names)
        let allowedToGo = Set(try map.registry.names(of: CompatibilityMask.intel.withheld(in: map.registry)))
        #expect(kept.isSubset(of: allowedToGo))
        for stays in ["sse2", "pni", "aes", "pclmuldq", "rdrand", "bmi1"] { #expect(names.contains(stays), "\(stays)") }
    }

    @Test func amdMaskWithholdsTheMissionsFeaturesAndSSE42WithThem() throws {
        let host = try Fixture.dump("Opteron-6234", map: map)
        let guest = try map.guestCPU(.compatibility, host: host.cpu)
        let names = map.names(guest.resolved)
        for withheld in ["ssse3", "sse4.1", "sse4a", "xop", "fma4", "popcnt", "abm", "misalignsse", "3dnow", "3dnowext"] {
            #expect(!names.contains(withheld), "\(withheld)")
        }
        // SSE4.2 code runs SSSE3 instructions: it cannot be shown without them.
        #expect(map.names(host.cpu).contains("sse4.2"))
        #expect(!names.contains("sse4.2"))
        // AVX is not in the AMD list and needs nothing withheld.
        for stays in ["avx", "xsave", "sse2", "pni", "aes"] { #expect(names.contains(stays), "\(stays)") }
    }

    @Test func guestCPUIDHasTheMaskedBitsClearedAndAnEightByteCLFLUSHLine() throws {
        let host = try Fixture.dump("Xeon-Gold-6148", map: map)
        #expect(host.table.clflushLineSize == 64)
        let guest = try map.guestCPU(.compatibility, host: host.cpu)
        let table = map.cpuidTable(for: guest, host: host.table)
        #expect(table.clflushLineSize == 8)
        #expect(table[CPUIDLeaf(1)].ecx & (1 << 9) == 0)  // SSSE3
        #expect(table[CPUIDLeaf(1)].ecx & (1 << 28) == 0)  // AVX
        #expect(table[CPUIDLeaf(1)].ecx & (1 << 26) == 0)  // XSAVE
        #expect(table[CPUIDLeaf(1)].edx & (1 << 26) != 0)  // SSE2 kept
        #expect(table.vendorString == "GenuineIntel")
        #expect(map.resolve(table: table).features == guest.features)
    }

    @Test func namedModelOnAHostThatLacksFeaturesNamesThem() throws {
        let host = try Fixture.dump("Core-i7-2600", map: map)  // Sandy Bridge: no AVX2, FMA, BMI
        let haswell = try CPUDefinition(qemuCPU: "Haswell-noTSX", map: map)
        let error = cpuError { _ = try map.guestCPU(.definition(haswell), host: host.cpu) }
        guard case .hostCannotOffer(let model, let missing)? = error else {
            Issue.record("wrong error \(String(describing: error))")
            return
        }
        #expect(model == "Haswell-noTSX")
        #expect(missing.contains("avx2") && missing.contains("fma") && missing.contains("bmi1"))
        let reduced = try CPUDefinition(qemuCPU: "SandyBridge,-avx,+vmx", map: map)
        let guest = try map.guestCPU(.definition(reduced), host: host.cpu)
        #expect(!map.names(guest.resolved).contains("avx"))
        #expect(map.names(guest.resolved).contains("vmx"))
        #expect(guest.model == "SandyBridge")
    }

    @Test func policiesShapeTheGuest() throws {
        let host = try Fixture.dump("Core-i7-2600", map: map)
        let xml = """
            <cpu mode='custom' match='exact'>
              <model>SandyBridge</model>
              <feature policy='optional' name='avx2'/>
              <feature policy='optional' name='vmx'/>
              <feature policy='force' name='rdrand'/>
              <feature policy='disable' name='aes'/>
            </cpu>
            """
        let guest = try map.guestCPU(.definition(CPUDefinition(xml: xml)), host: host.cpu)
        let names = map.names(guest.resolved)
        #expect(!names.contains("avx2"))  // optional, host lacks it
        #expect(names.contains("vmx"))  // optional, host has it
        #expect(names.contains("rdrand"))  // forced
        #expect(!names.contains("aes"))
        let forbid = try CPUDefinition(xml: "<cpu><model>SandyBridge</model><feature policy='forbid' name='vmx'/></cpu>")
        #expect(throws: CPUError.forbiddenFeaturePresent(["vmx"])) { try map.guestCPU(.definition(forbid), host: host.cpu) }
    }

    @Test func poolModeOnAHostOutsideThePoolNamesWhatItLacks() throws {
        let old = try Fixture.dump("Core-i7-2600", map: map).cpu
        let pool = [try Fixture.dump("Xeon-Gold-6148", map: map).cpu, try Fixture.dump("Ice-Lake-Server", map: map).cpu]
        #expect(throws: CPUError.self) { try map.guestCPU(.pool(pool), host: old) }
        let guest = try map.guestCPU(.pool(pool), host: pool[0])
        #expect(guest.features == pool[0].features.intersection(pool[1].features))
        #expect(throws: CPUError.emptyPool) { try map.guestCPU(.pool([]), host: old) }
    }
}
