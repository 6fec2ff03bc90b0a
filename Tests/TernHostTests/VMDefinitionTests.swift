import TernCPU
import TernHypervisor
import Testing
@testable import TernHost

@Suite struct VMDefinitionTests {
    func domain(_ body: String, name: String = "vm1") -> String {
        "<domain type='qemu'><name>\(name)</name><memory unit='MiB'>512</memory><vcpu>2</vcpu><os><type arch='x86_64'>hvm</type><kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0</cmdline></os>\(body)</domain>"
    }

    @Test func readsTheLibvirtSubset() throws {
        let vm = try VMDefinition(xml: domain("<cpu mode='custom' match='exact'><model>Haswell-noTSX</model><feature policy='disable' name='avx2'/></cpu>"))
        #expect(vm.name == "vm1")
        #expect(vm.memoryMiB == 512)
        #expect(vm.vcpus == 2)
        #expect(vm.kernel == "/k" && vm.initrd == "/i" && vm.cmdline == "console=ttyS0")
        guard case .definition(let cpu) = vm.cpu else {
            Issue.record("expected a CPU definition")
            return
        }
        #expect(cpu.model == "Haswell-noTSX")
        #expect(cpu.features == [.init(name: "avx2", policy: .disable)])
    }

    @Test func aVirtioBalloonWithFreePageReportingUnlessTheDefinitionSaysOtherwise() throws {
        #expect(try VMDefinition(xml: domain("")).memoryBalloon == MemoryBalloon(freePageReporting: true))
        #expect(try VMDefinition(xml: domain("<devices><memballoon model='virtio'/></devices>")).memoryBalloon?.freePageReporting == true)
        #expect(
            try VMDefinition(xml: domain("<devices><memballoon model='virtio' freePageReporting='off'/></devices>")).memoryBalloon
                == MemoryBalloon(freePageReporting: false))
        #expect(try VMDefinition(xml: domain("<devices><memballoon model='none'/></devices>")).memoryBalloon == nil)
    }

    @Test func memoryUnits() throws {
        #expect(try VMDefinition(xml: domain("").replacingOccurrences(of: "unit='MiB'>512", with: "unit='GiB'>2")).memoryMiB == 2048)
        #expect(try VMDefinition(xml: domain("").replacingOccurrences(of: "<memory unit='MiB'>512", with: "<memory>524288")).memoryMiB == 512)
    }

    @Test func ternsOwnModesLiveInMetadata() throws {
        let compat = try VMDefinition(xml: domain("<metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='compatibility'/></metadata>"))
        #expect(compat.cpu == .compatibility)
        let pool = try VMDefinition(
            xml: domain(
                "<metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='pool'><cpu><arch>x86_64</arch><model>SandyBridge</model></cpu><cpu><arch>x86_64</arch><model>Haswell</model></cpu></tern:cpu></metadata>"))
        guard case .pool(let members) = pool.cpu else {
            Issue.record("expected pool mode")
            return
        }
        #expect(members.count == 2)
        let map = try CPUMap.builtin()
        guard case .pool(let cpus) = try pool.cpuConfig(map: map) else {
            Issue.record("expected a pool")
            return
        }
        #expect(cpus.count == 2)
        #expect(try VMDefinition(xml: domain("")).cpu == .hostPassthrough)
    }

    @Test(arguments: [
        ("<domain><memory>1</memory></domain>", "<name> is missing"),
        ("<vm/>", "expected <domain>"),
        ("<domain><name>a b</name><memory>1</memory><os><kernel>/k</kernel></os></domain>", "may use only letters"),
        ("<domain><name>..</name><memory>1</memory><os><kernel>/k</kernel></os></domain>", "may not begin with '.'"),
        ("<domain><name>.</name><memory>1</memory><os><kernel>/k</kernel></os></domain>", "may not begin with '.'"),
        ("<domain><name>a</name><os><kernel>/k</kernel></os></domain>", "<memory> is missing"),
        ("<domain><name>a</name><memory unit='parsecs'>1</memory><os><kernel>/k</kernel></os></domain>", "not a known unit"),
        ("<domain><name>a</name><memory>1024</memory></domain>", "nothing to boot"),
        ("<domain><name>a</name><memory>1024</memory><os><type arch='aarch64'>hvm</type><kernel>/k</kernel></os></domain>", "x86_64 only"),
        ("<domain><name>a</name><memory>1024</memory><os><kernel>/k</kernel></os><metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='sideways'/></metadata></domain>", "unknown Tern CPU mode"),
        ("<domain><name>a</name><memory>1024</memory><os><kernel>/k</kernel></os><cpu><feature name='avx'/></cpu></domain>", "needs a <model>"),
        ("<domain><name>a</name>", "malformed XML"),
        ("<domain><name>a</name><memory>1024</memory><os><kernel>/k</kernel></os><devices><memballoon model='xen'/></devices></domain>", "<memballoon model='xen'> is not supported"),
        ("<domain><name>a</name><memory>1024</memory><os><kernel>/k</kernel></os><devices><memballoon/></devices></domain>", "<memballoon> needs a model"),
        ("<domain><name>a</name><memory>1024</memory><os><kernel>/k</kernel></os><devices><memballoon model='virtio' freePageReporting='yes'/></devices></domain>", "must be 'on' or 'off'"),
    ])
    func refusesBadDefinitions(xml: String, message: String) {
        #expect {
            try VMDefinition(xml: xml)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    /// A new name (`tern restore FILE --name`, an incoming move's) names a directory too.
    @Test(arguments: ["..", ".", ".hidden", "a/b", "x</name><name>y"])
    func refusesANewNameThatIsNotAName(name: String) throws {
        let vm = try VMDefinition(xml: domain(""))
        #expect(throws: VMDefinitionError.self) { try vm.renamed(name) }
        #expect(try vm.renamed("vm-2.copy").name == "vm-2.copy")
    }
}
