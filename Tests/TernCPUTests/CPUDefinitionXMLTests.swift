import Testing
@testable import TernCPU

@Suite struct CPUDefinitionXMLTests {
    @Test func readsAHostDescription() throws {
        let xml = """
            <cpu>
              <arch>x86_64</arch>
              <model>Skylake-Server</model>
              <vendor>Intel</vendor>
              <signature family='6' model='85' stepping='4'/>
              <topology sockets='2' dies='1' cores='4' threads='2'/>
              <feature name='vmx'/>
              <feature name='ss'/>
            </cpu>
            """
        let cpu = try CPUDefinition(xml: xml)
        #expect(cpu.kind == .host)
        #expect(cpu.model == "Skylake-Server")
        #expect(cpu.vendor == "Intel")
        #expect(cpu.signature == CPUSignature(family: 6, model: 85, stepping: 4))
        #expect(cpu.topology?.vcpus == 16)
        #expect(cpu.features == [.init(name: "vmx", policy: nil), .init(name: "ss", policy: nil)])
        #expect(try CPUDefinition(xml: cpu.xml()) == cpu)
    }

    @Test func readsAGuestDefinitionWithEveryPolicy() throws {
        let xml = """
            <cpu mode='custom' match='strict' check='full'>
              <model fallback='forbid' vendor_id='AuthenticAMD'>Haswell-noTSX</model>
              <feature policy='force' name='vmx'/>
              <feature policy='require' name='ss'/>
              <feature policy='optional' name='pdpe1gb'/>
              <feature policy='disable' name='avx2'/>
              <feature policy='forbid' name='rtm'/>
              <feature name='pcid'/>
            </cpu>
            """
        let cpu = try CPUDefinition(xml: xml)
        #expect(cpu.kind == .guest)
        #expect(cpu.mode == .custom)
        #expect(cpu.match == .strict)
        #expect(cpu.check == .full)
        #expect(cpu.fallback == .forbid)
        #expect(cpu.vendorID == "AuthenticAMD")
        #expect(cpu.features.map(\.policy) == [.force, .require, .optional, .disable, .forbid, .require])
        let again = try CPUDefinition(xml: cpu.xml())
        #expect(again == cpu)
        #expect(cpu.xml().contains("<feature policy='disable' name='avx2'/>"))
    }

    @Test func matchDefaultsToExactAndModesParse() throws {
        #expect(try CPUDefinition(xml: "<cpu><model>qemu64</model></cpu>").match == .exact)
        let passthrough = try CPUDefinition(xml: "<cpu mode='host-passthrough' migratable='on'/>")
        #expect(passthrough.mode == .hostPassthrough)
        #expect(passthrough.migratable == true)
        #expect(try CPUDefinition(xml: "<cpu mode='host-model'/>").mode == .hostModel)
    }

    @Test func findsTheCPUInsideDomainAndCapabilitiesXML() throws {
        let domain = "<domain type='kvm'><name>a</name><cpu mode='custom'><model>EPYC</model></cpu></domain>"
        #expect(try CPUDefinition(xml: domain).model == "EPYC")
        let caps = "<capabilities><host><cpu><arch>x86_64</arch><model>EPYC</model></cpu></host></capabilities>"
        #expect(try CPUDefinition(xml: caps).kind == .host)
        let several = "<?xml version='1.0'?>\n<cpu><arch>x86_64</arch><model>EPYC</model></cpu>\n<cpu><arch>x86_64</arch><model>EPYC-Rome</model></cpu>"
        #expect(try CPUDefinition.all(xml: several).map(\.model) == ["EPYC", "EPYC-Rome"])
    }

    @Test func malformedXMLNamesLineAndColumn() throws {
        let text = try Fixture.text("malformed/unclosed-feature.xml")
        let error = cpuError { _ = try CPUDefinition(xml: text, source: "unclosed-feature.xml") }
        guard case .malformedXML(let source, let line, _, _)? = error else {
            Issue.record("wrong error: \(String(describing: error))")
            return
        }
        #expect(source == "unclosed-feature.xml")
        #expect(line == 4)
        #expect(error?.description.hasPrefix("unclosed-feature.xml:4:") == true)
    }

    @Test(arguments: ["malformed/bad-match.xml", "malformed/empty.xml", "malformed/bad-policy.xml"])
    func badDefinitionsAreRefused(path: String) throws {
        let text = try Fixture.text(path)
        #expect(throws: CPUError.self) { try CPUDefinition(xml: text, source: path) }
    }

    @Test func badCPUDataIsRefused() throws {
        let text = try Fixture.text("malformed/bad-cpudata.xml")
        #expect(throws: CPUError.invalidXML(source: "x", message: "line 2: eax_in='zz' is not a number")) {
            try CPUIDTable(cpudataXML: text, source: "x")
        }
    }

    @Test func cpudataRoundTrips() throws {
        let text = try Fixture.text("cpuid-dumps/EPYC-7502-32-Core.xml")
        let table = try CPUIDTable(cpudataXML: text)
        #expect(table.vendorString == "AuthenticAMD")
        #expect(table.signature == CPUSignature(family: 23, model: 49, stepping: 0))
        #expect(table.msrs[0x10a] == 0x69)
        #expect(try CPUIDTable(cpudataXML: table.cpudataXML) == table)
    }

    @Test func unknownModelAndFeatureAreNamedWithSuggestions() throws {
        let map = try CPUMap.builtin()
        for (path, expected) in [("malformed/unknown-model.xml", "Haswell"), ("malformed/unknown-feature.xml", "avx2")] {
            let cpu = try CPUDefinition(xml: Fixture.text(path))
            let error = cpuError { _ = try map.resolve(cpu) }
            #expect(error?.description.contains("did you mean") == true, "\(String(describing: error))")
            #expect(error?.description.contains(expected) == true, "\(String(describing: error))")
        }
    }
}
