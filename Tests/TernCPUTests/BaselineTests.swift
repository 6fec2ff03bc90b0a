import Testing
@testable import TernCPU

@Suite struct BaselineTests {
    /// The libvirt guide's example: a pentium3 i686 workstation and a phenom x86_64 server.
    static let guideExample = """
        <cpu>
          <arch>i686</arch>
          <model>pentium3</model>
          <topology sockets='1' cores='2' threads='1'/>
          <feature name='lahf_lm'/><feature name='lm'/><feature name='xtpr'/><feature name='cx16'/>
          <feature name='ssse3'/><feature name='tm2'/><feature name='est'/><feature name='vmx'/>
          <feature name='ds_cpl'/><feature name='monitor'/><feature name='pni'/><feature name='pbe'/>
          <feature name='tm'/><feature name='ht'/><feature name='ss'/><feature name='sse2'/>
          <feature name='acpi'/><feature name='ds'/><feature name='clflush'/><feature name='apic'/>
        </cpu>
        <cpu>
          <arch>x86_64</arch>
          <model>phenom</model>
          <topology sockets='2' cores='4' threads='1'/>
          <feature name='osvw'/><feature name='3dnowprefetch'/><feature name='misalignsse'/><feature name='sse4a'/>
          <feature name='abm'/><feature name='cr8legacy'/><feature name='extapic'/><feature name='cmp_legacy'/>
          <feature name='lahf_lm'/><feature name='rdtscp'/><feature name='pdpe1gb'/><feature name='popcnt'/>
          <feature name='cx16'/><feature name='ht'/><feature name='vme'/>
        </cpu>
        """

    @Test(arguments: ["builtin", Fixture.libvirtMapDirectory])
    func guideExampleGivesLibvirtsFeatures(mapName: String) throws {
        let map = mapName == "builtin" ? try CPUMap.builtin() : try CPUMap.libvirt(directory: mapName)
        let baseline = try map.baseline(CPUDefinition.all(xml: Self.guideExample))
        let features = map.names(try map.resolve(baseline))
        // The guide's answer: pentium3 plus lahf_lm lm cx16 monitor pni ht sse2 clflush apic.
        let pentium3 = map.names(try map.cpu("pentium3"))
        #expect(features == pentium3.union(["lahf_lm", "lm", "cx16", "monitor", "pni", "ht", "sse2", "clflush", "apic"]))
        #expect(baseline.match == .exact)
        #expect(baseline.features.allSatisfy { $0.policy == .require })
    }

    @Test func libvirtMapReproducesLibvirtsText() throws {
        let map = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        let baseline = try map.baseline(CPUDefinition.all(xml: Self.guideExample))
        #expect(baseline.xml() == """
            <cpu mode='custom' match='exact'>
              <model fallback='allow'>kvm32</model>
              <feature policy='require' name='vme'/>
              <feature policy='require' name='ht'/>
              <feature policy='require' name='monitor'/>
              <feature policy='require' name='cx16'/>
              <feature policy='require' name='lm'/>
              <feature policy='require' name='lahf_lm'/>
            </cpu>

            """)
    }

    @Test func singleModelIsPreferredAndForbidsFallback() throws {
        let map = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        let one = try map.baseline([CPUDefinition(xml: "<cpu><arch>x86_64</arch><model>Haswell</model></cpu>")])
        #expect(one.model == "Haswell")
        #expect(one.fallback == .forbid)
        #expect(one.vendor == nil)
        #expect(one.features.isEmpty)
        // A model not meant for guests falls back, with what it lacks disabled.
        let noTSX = try map.baseline([CPUDefinition(xml: "<cpu><arch>x86_64</arch><model>Cascadelake-Server-noTSX</model></cpu>")])
        #expect(noTSX.model == "Cascadelake-Server")
        #expect(noTSX.fallback == .allow)
        #expect(noTSX.features == [.init(name: "hle", policy: .disable), .init(name: "rtm", policy: .disable)])
    }

    @Test func featuresFlagExpandsAndSorts() throws {
        let map = try CPUMap.libvirt(directory: Fixture.libvirtMapDirectory)
        let cpus = try CPUDefinition.all(xml: "<cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor><feature name='invtsc'/></cpu>")
        let expanded = try map.baseline(cpus, expandFeatures: true)
        let names = expanded.features.map(\.name)
        #expect(names == names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) })
        #expect(expanded.features.contains(.init(name: "monitor", policy: .disable)))  // EPYC's removed feature
        #expect(expanded.features.contains(.init(name: "invtsc", policy: .require)))
        let migratable = try map.baseline(cpus, migratable: true)
        #expect(!migratable.features.contains { $0.name == "invtsc" })
    }

    @Test func errors() throws {
        let map = try CPUMap.builtin()
        #expect(throws: CPUError.emptyPool) { try map.baseline([]) }
        let mixed = try CPUDefinition.all(
            xml: "<cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor></cpu><cpu><arch>x86_64</arch><model>Haswell</model><vendor>Intel</vendor></cpu>")
        #expect(throws: CPUError.mixedVendors(["AMD", "Intel"])) { try map.baseline(mixed) }
        let unknown = try CPUDefinition.all(xml: "<cpu><arch>x86_64</arch><model>Hasswell</model></cpu>")
        #expect(throws: CPUError.unknownModel("Hasswell", suggestions: ["Haswell"])) { try map.baseline(unknown) }
    }

    @Test func realPoolsOfRecordedHosts() throws {
        let map = try CPUMap.builtin()
        let epyc = [try Fixture.dump("EPYC-7601-32-Core", map: map).cpu, try Fixture.dump("EPYC-7502-32-Core", map: map).cpu]
        let common = try map.intersect(epyc)
        #expect(common.vendor == "AMD")
        #expect(common.features == epyc[0].features.intersection(epyc[1].features))
        let described = try map.describe(common, kind: .guest)
        #expect(try map.resolve(described).features == common.features)
    }
}
