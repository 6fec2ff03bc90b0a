import Testing
@testable import TernCPU

@Suite struct QEMUCPUSpecTests {
    let map: CPUMap
    init() throws { map = try CPUMap.builtin() }

    @Test func readsModelAndFeatureSwitches() throws {
        let cpu = try CPUDefinition(qemuCPU: "Haswell-noTSX,-avx2,+vmx,pcid=off,sse4_1=on,enforce", map: map)
        #expect(cpu.model == "Haswell-noTSX")
        #expect(cpu.check == .full)
        #expect(cpu.features == [
            .init(name: "avx2", policy: .disable), .init(name: "vmx", policy: .require),
            .init(name: "pcid", policy: .disable), .init(name: "sse4.1", policy: .require),
        ])
    }

    @Test func writesQEMUSpellings() throws {
        let cpu = try CPUDefinition(qemuCPU: "Haswell-noTSX,-avx2,+lahf_lm,+pclmuldq", map: map)
        #expect(cpu.qemuCPU(map: map) == "Haswell-noTSX,avx2=off,lahf-lm=on,pclmulqdq=on")
        #expect(try CPUDefinition(qemuCPU: cpu.qemuCPU(map: map), map: map) == cpu)
    }

    @Test func hostAndMax() throws {
        #expect(try CPUDefinition(qemuCPU: "host", map: map).mode == .hostPassthrough)
        #expect(try CPUDefinition(qemuCPU: "max,-avx512f", map: map).mode == .maximum)
    }

    @Test func versionedQEMUNamesAreAliases() throws {
        #expect(try CPUDefinition(qemuCPU: "Haswell-v2", map: map).model == "Haswell-noTSX")
    }

    @Test(arguments: ["", ",avx", "Haswel", "Haswell,+avx3", "Haswell,avx=maybe", "Haswell,,avx", "host,+avx"])
    func refusesBadSpecs(spec: String) {
        #expect(throws: CPUError.self) { try CPUDefinition(qemuCPU: spec, map: map) }
    }
}
