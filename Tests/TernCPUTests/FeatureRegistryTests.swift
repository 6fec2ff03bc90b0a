import Testing
@testable import TernCPU

@Suite struct FeatureRegistryTests {
    let map: CPUMap
    init() throws { map = try CPUMap.builtin() }

    @Test(arguments: [
        ("sse3", "pni"), ("pni", "pni"), ("sse4_1", "sse4.1"), ("SSE4.1", "sse4.1"), ("sse4_2", "sse4.2"),
        ("pclmulqdq", "pclmuldq"), ("lzcnt", "abm"), ("lahf-lm", "lahf_lm"), ("nonstop_tsc", "invtsc"),
        ("tsc_adjust", "tsc_adjust"), ("tsc-adjust", "tsc_adjust"),
    ])
    func aliasesResolveToCanonicalNames(alias: String, canonical: String) throws {
        #expect(try map.registry.lookup(alias).name == canonical)
    }

    @Test func unknownFeatureSuggestsCloseNames() {
        #expect(throws: CPUError.self) { try map.registry.lookup("avx3") }
        let error = cpuError { _ = try map.registry.lookup("avx5l2f") }
        guard case .unknownFeature(let name, let suggestions)? = error else {
            Issue.record("wrong error \(String(describing: error))")
            return
        }
        #expect(name == "avx5l2f")
        #expect(suggestions.contains("avx512f"))
        #expect(error?.description.contains("did you mean") == true)
    }

    @Test func knownBitPositions() throws {
        // Intel SDM vol. 2A, CPUID: leaf 1 ECX[0] SSE3, ECX[9] SSSE3, ECX[28] AVX; leaf 7 EBX[5] AVX2;
        // AMD APM: 0x80000001 ECX[6] SSE4A; IA32_ARCH_CAPABILITIES bit 0 RDCL_NO.
        let expected: [(String, FeatureBit)] = [
            ("pni", .cpuid(leaf: CPUIDLeaf(1), register: .ecx, bit: 0)),
            ("ssse3", .cpuid(leaf: CPUIDLeaf(1), register: .ecx, bit: 9)),
            ("avx", .cpuid(leaf: CPUIDLeaf(1), register: .ecx, bit: 28)),
            ("avx2", .cpuid(leaf: CPUIDLeaf(7), register: .ebx, bit: 5)),
            ("avx512-bf16", .cpuid(leaf: CPUIDLeaf(7, subleaf: 1), register: .eax, bit: 5)),
            ("sse4a", .cpuid(leaf: CPUIDLeaf(0x8000_0001), register: .ecx, bit: 6)),
            ("invtsc", .cpuid(leaf: CPUIDLeaf(0x8000_0007), register: .edx, bit: 8)),
            ("xsaveopt", .cpuid(leaf: CPUIDLeaf(0xd, subleaf: 1), register: .eax, bit: 0)),
            ("rdctl-no", .msr(index: 0x10a, bit: 0)),
        ]
        for (name, bit) in expected { #expect(try map.registry.lookup(name).bits == [bit], "\(name)") }
    }

    @Test func coversTheLeavesLibvirtNames() {
        let leaves = Set(map.registry.features.flatMap(\.bits).compactMap { bit -> CPUIDLeaf? in
            if case .cpuid(let leaf, _, _) = bit { leaf } else { nil }
        })
        for leaf in [
            CPUIDLeaf(1), CPUIDLeaf(6), CPUIDLeaf(7), CPUIDLeaf(7, subleaf: 1), CPUIDLeaf(0xd, subleaf: 1), CPUIDLeaf(0x14),
            CPUIDLeaf(0x8000_0001), CPUIDLeaf(0x8000_0007), CPUIDLeaf(0x8000_0008),
        ] {
            #expect(leaves.contains(leaf), "no feature in leaf \(leaf)")
        }
        #expect(map.registry.features.contains { if case .msr(0x10a, _) = $0.bits.first { true } else { false } })
    }

    @Test func everyFeatureMatchesLibvirtsBit() throws {
        let libvirt = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        for feature in libvirt.registry.features {
            let ours = try map.registry.lookup(feature.name)
            #expect(ours.name == feature.name)
            #expect(ours.bits == feature.bits, "\(feature.name)")
            #expect(ours.migratable == feature.migratable, "\(feature.name)")
        }
    }

    @Test func featuresReadFromACPUIDTable() throws {
        var table = CPUIDTable()
        table.set(.cpuid(leaf: CPUIDLeaf(1), register: .ecx, bit: 0), to: true)
        table.set(.cpuid(leaf: CPUIDLeaf(7), register: .ebx, bit: 5), to: true)
        #expect(map.registry.names(of: map.registry.features(of: table)) == ["pni", "avx2"])
    }

    @Test func featureSetOperations() {
        var a = FeatureSet(indices: [1, 64, 130])
        let b = FeatureSet(indices: [64, 200])
        #expect(a.intersection(b) == FeatureSet(indices: [64]))
        #expect(a.union(b).count == 4)
        #expect(a.subtracting(b).indices == [1, 130])
        #expect(FeatureSet(indices: [64]).isSubset(of: a))
        #expect(!b.isSubset(of: a))
        a.formIntersection(FeatureSet())
        #expect(a.isEmpty)
        #expect(a == FeatureSet())
    }
}
