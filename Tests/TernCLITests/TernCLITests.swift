import Foundation
import TernTestSupport
import Testing

let dumps = cpuidDumps
let malformed = "Tests/TernCPUTests/Fixtures/malformed"

@Suite struct TernCLITests {
    @Test func capabilitiesDescribeARecordedHost() throws {
        let run = try tern("capabilities", "--host", "\(dumps)/Xeon-Gold-6148.xml")
        #expect(run.status == 0)
        #expect(run.out.contains("<arch>x86_64</arch>"))
        #expect(run.out.contains("<model>Skylake-Server</model>"))
        #expect(run.out.contains("<signature family='6' model='85' stepping='4'/>"))
        #expect(run.out.contains("<domain type='qemu'/>"))
    }

    @Test func capabilitiesOfThisHostParseBackAsACPU() throws {
        let run = try tern("capabilities", "--json")
        #expect(run.status == 0)
        #expect(run.out.contains("\"accelerator\""))
    }

    @Test func compareSaysSupersetAndIncompatibleWithReasons() throws {
        let superset = try tern("cpu-compare", "-", "--host", "\(dumps)/Xeon-Gold-6148.xml", stdin: "<cpu><model>Haswell-noTSX</model></cpu>")
        #expect(superset.status == 0)
        #expect(superset.out == "Host CPU is a superset of CPU described in -\n")
        let incompatible = try tern(
            "cpu-compare", "-", "--host", "\(dumps)/Core-i7-2600.xml", "--error", stdin: "<cpu><model>Haswell-noTSX</model></cpu>")
        #expect(incompatible.status == 1)
        #expect(incompatible.out.contains("incompatible"))
        #expect(incompatible.out.contains("Host CPU does not provide required features: fma, movbe"))
    }

    @Test func baselineOfTwoDumpsWithLibvirtsMapMatchesVirsh() throws {
        let caps1 = try tern("capabilities", "--host", "\(dumps)/EPYC-7601-32-Core.xml", "--cpu-map", "/usr/share/libvirt/cpu_map")
        let caps2 = try tern("capabilities", "--host", "\(dumps)/EPYC-7502-32-Core.xml", "--cpu-map", "/usr/share/libvirt/cpu_map")
        let both = caps1.out + caps2.out
        let run = try tern("cpu-baseline", "-", "--cpu-map", "/usr/share/libvirt/cpu_map", stdin: both)
        #expect(run.status == 0, "\(run.err)")
        #expect(run.out.hasPrefix("<cpu mode='custom' match='exact'>\n  <model fallback='allow'>EPYC</model>\n  <vendor>AMD</vendor>\n"))
    }

    @Test func malformedXMLGivesLineAndColumn() throws {
        let run = try tern("cpu-baseline", "\(malformed)/unclosed-feature.xml")
        #expect(run.status != 0)
        #expect(run.err.contains("unclosed-feature.xml:4:"))
        #expect(run.err.contains("malformed XML"))
    }

    @Test func unknownNamesSuggestCloseOnes() throws {
        let model = try tern("cpuid", "--cpu", "Haswel-noTSX")
        #expect(model.status != 0)
        #expect(model.err.contains("unknown CPU model 'Haswel-noTSX'; did you mean 'Haswell-noTSX'"))
        let feature = try tern("cpuid", "--cpu", "Haswell-noTSX,-avx3")
        #expect(feature.status != 0)
        #expect(feature.err.contains("unknown CPU feature 'avx3'"))
    }

    @Test func emptyPoolAndMixedVendorsAreRefused() throws {
        let empty = try tern("cpu-baseline", "-", stdin: "<cpus/>")
        #expect(empty.status != 0)
        #expect(empty.err.contains("no <cpu> element"))
        let mixed = try tern(
            "cpu-baseline", "-",
            stdin: "<cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor></cpu><cpu><arch>x86_64</arch><model>Haswell</model><vendor>Intel</vendor></cpu>")
        #expect(mixed.status != 0)
        #expect(mixed.err.contains("CPU vendors differ (AMD, Intel)"))
    }

    /// Options that only shape a live transfer are refused with --no-live, before any daemon is asked.
    @Test(arguments: [["--postcopy"], ["--auto-converge"], ["--max-downtime", "100"], ["--quick", "/tmp"]])
    func noLiveRefusesOptionsOfALiveTransfer(extra: [String]) throws {
        let run = try tern(arguments: ["migrate", "vm", "--to", "/nonexistent.sock", "--no-live"] + extra)
        #expect(run.status != 0)
        #expect(run.err.contains("--no-live pauses the guest for the whole transfer"), "\(run.err)")
    }

    /// Nor do they, or a time limit, apply to a quick migration (a save and a restore).
    @Test(arguments: [
        ["--postcopy"], ["--auto-converge"], ["--max-downtime", "100"], ["--bandwidth", "8"], ["--connections", "2"], ["--timeout", "5"],
    ])
    func quickRefusesOptionsOfALiveTransfer(extra: [String]) throws {
        let run = try tern(arguments: ["migrate", "vm", "--to", "/nonexistent.sock", "--quick", "/tmp"] + extra)
        #expect(run.status != 0)
        #expect(run.err.contains("--quick saves the VM to a file and restores it there"), "\(run.err)")
    }

    /// Numbers out of range are refused before any daemon is asked.
    @Test(arguments: [
        (["migrate", "vm", "--to", "/b.sock", "--timeout", "9223372036854775807"], "--timeout must be 1 s to 7 days"),
        (["migrate", "vm", "--to", "/b.sock", "--bandwidth", "0"], "--bandwidth must be 1 to 1048576 MiB/s"),
        (["migrate", "vm", "--to", "/b.sock", "--max-downtime=-5"], "--max-downtime must be 0 to 2000000 ms"),
        (["console", "vm", "--log", "--lines=-1"], "--lines must not be negative"),
    ])
    func refusesNumbersOutOfRange(arguments: [String], message: String) throws {
        let run = try tern(arguments: arguments)
        #expect(run.status != 0)
        #expect(run.err.contains(message), "\(run.err)")
    }

    @Test func cpuidInCompatibilityModeShowsAnEightByteCLFLUSHLine() throws {
        let run = try tern("cpuid", "--host", "\(dumps)/Xeon-Gold-6148.xml", "--compat", "--json")
        #expect(run.status == 0)
        #expect(run.out.contains("\"clflushLineSize\" : 8"))
        #expect(!run.out.contains("\"avx\""))
        #expect(!run.out.contains("\"ssse3\""))
    }

    @Test func migrateCheckExplainsRefusals() throws {
        let run = try tern(
            "migrate-check", "--host", "\(dumps)/Xeon-Gold-6148.xml", "\(dumps)/Ice-Lake-Server.xml", "\(dumps)/Core-i7-2600.xml",
            "\(dumps)/EPYC-7502-32-Core.xml")
        #expect(run.status == 0)
        let lines = run.out.split(separator: "\n")
        #expect(lines.contains { $0.contains("can move") && $0.contains("Ice-Lake-Server") })
        #expect(lines.contains { $0.contains("refused") && $0.contains("Core-i7-2600") && $0.contains("avx512f") })
        #expect(lines.contains { $0.contains("refused") && $0.contains("EPYC-7502") && $0.contains("vendors") })
    }

    @Test func helpNamesTheVirshCommands() throws {
        let run = try tern("--help")
        for command in ["capabilities", "domcapabilities", "cpu-compare", "cpu-baseline", "cpu-models", "cpu-features", "cpuid", "migrate-check"] {
            #expect(run.out.contains(command), "\(command)")
        }
    }

    @Test func chooseOneGuestCPUMode() throws {
        let run = try tern("cpuid", "--compat", "--cpu", "qemu64")
        #expect(run.status != 0)
        #expect(run.err.contains("choose one of --cpu, --compat and --pool"))
    }
}
