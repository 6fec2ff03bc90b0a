import ArgumentParser
import Foundation
import TernCPU
import TernHost

struct CPUIDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpuid",
        abstract: "Print the exact CPUID table Tern would give a VM on this host.",
        discussion: """
            Without --cpu, --compat or --pool the guest gets the host's CPU (host passthrough). \
            The table lists every leaf with its four registers, then the features the guest sees.
            """)

    @OptionGroup var guest: GuestCPUOptions
    @OptionGroup var map: MapOptions
    @OptionGroup var host: HostOptions
    @Flag(help: "Print libvirt <cpudata> XML instead of a table.") var xml = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let cpuMap = try map.load()
        let caps = try host.capabilities(map: cpuMap)
        let cpu = try cpuMap.guestCPU(guest.config(map: cpuMap), host: caps.host.cpu)
        let table = cpuMap.cpuidTable(for: cpu, host: caps.host.table)
        let names = cpuMap.registry.names(of: cpu.features)
        if json {
            try printJSON(
                CPUIDJSON(
                    model: cpu.model, vendor: cpu.vendor, signature: cpu.signature, clflushLineSize: table.clflushLineSize,
                    features: names,
                    leaves: table.leaves.keys.sorted().map { leaf in
                        let r = table[leaf]
                        return .init(
                            leaf: hex(leaf.function), subleaf: Int(leaf.subleaf), eax: hex(r.eax), ebx: hex(r.ebx),
                            ecx: hex(r.ecx), edx: hex(r.edx))
                    }))
            return
        }
        if xml {
            print(table.cpudataXML, terminator: "")
            return
        }
        print("# guest CPU: \(guest.label) on \(caps.host.source)")
        print("# vendor \(cpu.vendor ?? "-")  \(cpu.signature.map(\.description) ?? "")  CLFLUSH line \(table.clflushLineSize) bytes")
        print("leaf        subleaf  eax         ebx         ecx         edx")
        for leaf in table.leaves.keys.sorted() {
            let r = table[leaf]
            print("\(hex(leaf.function))  \(String(leaf.subleaf).padding(toLength: 7, withPad: " ", startingAt: 0))  \(hex(r.eax))  \(hex(r.ebx))  \(hex(r.ecx))  \(hex(r.edx))")
        }
        print("# \(names.count) features: " + names.joined(separator: " "))
    }
}

struct CPUIDJSON: Encodable {
    struct Leaf: Encodable {
        var leaf: String
        var subleaf: Int
        var eax, ebx, ecx, edx: String
    }
    var model: String?
    var vendor: String?
    var signature: CPUSignature?
    var clflushLineSize: Int
    var features: [String]
    var leaves: [Leaf]
}

func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

struct MigrateCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-check",
        abstract: "Say, for a VM started on this host, which of the given hosts it could move to, and if not, why.",
        discussion: """
            The VM's CPU is computed on this host (or --host) from --cpu, --compat or --pool; each \
            destination (a <cpudata> dump, a <cpu> description or capabilities XML) is then checked \
            with the processor compatibility check every migration and restore runs. \
            Exit status 0 even when some moves are refused; 1 on an error.
            """)

    @Argument(help: ArgumentHelp("Destination host CPUs.", valueName: "file"))
    var destinations: [String]
    @OptionGroup var guest: GuestCPUOptions
    @OptionGroup var map: MapOptions
    @OptionGroup var host: HostOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let cpuMap = try map.load()
        let caps = try host.capabilities(map: cpuMap)
        let vm = try cpuMap.guestCPU(guest.config(map: cpuMap), host: caps.host.cpu)
        var rows: [MigrateCheckJSON.Row] = []
        for file in destinations {
            let destination = try cpuMap.hostDescription(xml: readInput(file), source: file)
            let verdict = cpuMap.checkMigration(vm: vm.resolved, destination: destination.cpu)
            rows.append(.init(destination: file, allowed: verdict.allowed, missing: verdict.missing, reason: verdict.reason))
        }
        if json {
            try printJSON(
                MigrateCheckJSON(
                    source: caps.host.source, mode: guest.label, vendor: vm.vendor,
                    features: cpuMap.registry.names(of: vm.features), destinations: rows))
            return
        }
        print("VM on \(caps.host.source) (\(guest.label)): \(vm.vendor ?? "?") CPU with \(vm.features.count) features")
        for row in rows {
            let name = URL(fileURLWithPath: row.destination).lastPathComponent
            print("  \(row.allowed ? "can move  " : "refused   ") \(name)" + (row.reason.map { ": \($0)" } ?? ""))
        }
    }
}

struct MigrateCheckJSON: Encodable {
    struct Row: Encodable {
        var destination: String
        var allowed: Bool
        var missing: [String]
        var reason: String?
    }
    var source: String
    var mode: String
    var vendor: String?
    var features: [String]
    var destinations: [Row]
}
