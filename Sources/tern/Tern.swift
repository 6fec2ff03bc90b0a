import ArgumentParser
import Foundation
import TernCPU
import TernHost
import TernQEMU

@main
struct Tern: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "Run VMs whose processor Tern controls, and move them between hosts that differ.",
        subcommands: [
            Capabilities.self, DomCapabilities.self, CPUCompare.self, CPUBaseline.self, CPUModels.self,
            CPUFeatures.self, CPUIDCommand.self, MigrateCheck.self, Run.self, Define.self, Start.self, List.self,
            DomInfo.self, Console.self, Shutdown.self, Destroy.self, Suspend.self, Resume.self, Undefine.self, Save.self,
            Restore.self, Migrate.self, DomJobInfo.self, DomJobAbort.self,
        ])
}

/// Options every CPU command shares: which CPU map to use.
struct MapOptions: ParsableArguments {
    @Option(
        name: .customLong("cpu-map"),
        help: ArgumentHelp(
            "Use a libvirt cpu_map directory instead of Tern's own CPU models.", valueName: "dir"))
    var cpuMap: String?

    func load() throws -> CPUMap {
        if let cpuMap { return try CPUMap.libvirt(directory: cpuMap) }
        return try CPUMap.builtin()
    }
}

/// The host a command speaks about: this machine, or a recorded processor standing in for it.
struct HostOptions: ParsableArguments {
    @Option(
        name: .customLong("host"),
        help: ArgumentHelp(
            "Describe this host with a recorded CPU instead of the real one: a <cpudata> dump, a <cpu> description or capabilities XML.",
            valueName: "file"))
    var hostFile: String?

    /// This host's capabilities (its CPU, or the recorded one), without starting QEMU.
    func capabilities(map: CPUMap) throws -> HostCapabilities {
        let (accelerator, reason) = QEMUAccelerator.detect()
        return try HostCapabilities.probe(map: map, hostCPUFile: hostFile, accelerator: accelerator, acceleratorReason: reason)
    }

    /// This host's capabilities with QEMU's offer for guests (QEMU is probed once and cached).
    func capabilitiesWithHypervisor(map: CPUMap) async throws -> (HostCapabilities, QEMUHypervisor) {
        let hypervisor = try await QEMUHypervisor.detect(map: map, cacheDirectory: cacheDirectory)
        var caps = try HostCapabilities.probe(
            map: map, hostCPUFile: hostFile, accelerator: hypervisor.accelerator, acceleratorReason: hypervisor.acceleratorReason)
        caps.limit(hypervisorOffer: try await hypervisor.hostOffer())
        return (caps, hypervisor)
    }
}

/// Where Tern caches what it learned from probing QEMU.
var cacheDirectory: URL {
    let environment = ProcessInfo.processInfo.environment
    if let cache = environment["XDG_CACHE_HOME"] { return URL(fileURLWithPath: cache).appendingPathComponent("tern") }
    return URL(fileURLWithPath: environment["HOME"] ?? NSTemporaryDirectory()).appendingPathComponent(".cache/tern")
}

/// Reads a file (or standard input for "-") as UTF-8 text.
func readInput(_ path: String) throws -> String {
    if path == "-" {
        return String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
    }
    guard FileManager.default.fileExists(atPath: path) else {
        throw ValidationError("cannot read '\(path)': no such file")
    }
    do {
        return try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw ValidationError("cannot read '\(path)': \(error.localizedDescription)")
    }
}

/// Prints a value as pretty, key-sorted JSON.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Writes a line to standard error.
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
