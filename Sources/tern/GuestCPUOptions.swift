import ArgumentParser
import Foundation
import TernCPU

/// How the user chooses a guest CPU on the command line: `--cpu DEF`, `--compat` or `--pool FILE`.
struct GuestCPUOptions: ParsableArguments {
    @Option(
        name: .customLong("cpu"),
        help: ArgumentHelp(
            "The guest CPU: QEMU syntax ('Haswell-noTSX,-avx2', 'host'), or a file with a libvirt <cpu> element.",
            valueName: "def"))
    var cpu: String?

    @Flag(name: .customLong("compat"), help: "Classic processor compatibility mode (the host's CPU minus the vendor's mask).")
    var compat = false

    @Option(
        name: .customLong("pool"),
        help: ArgumentHelp(
            "Pool mode: offer exactly what every CPU in these files offers (<cpudata> dumps or <cpu> descriptions; repeatable).",
            valueName: "file"))
    var pool: [String] = []

    func validate() throws {
        let chosen = [cpu != nil, compat, !pool.isEmpty].filter { $0 }.count
        if chosen > 1 { throw ValidationError("choose one of --cpu, --compat and --pool") }
    }

    /// The configuration these options name (host passthrough when none is given).
    ///
    /// - Parameter hypervisorOffer: what this host's hypervisor can give any guest; each pool
    ///   member is limited to it, as that host would be when running the same hypervisor.
    func config(map: CPUMap, hypervisorOffer: FeatureSet? = nil) throws -> GuestCPUConfig {
        if compat { return .compatibility }
        if !pool.isEmpty {
            var cpus: [ResolvedCPU] = []
            for file in pool { cpus += try map.hostPool(xml: readInput(file), source: file) }
            if let hypervisorOffer {
                cpus = cpus.map { ResolvedCPU(vendor: $0.vendor, signature: $0.signature, features: $0.features.intersection(hypervisorOffer)) }
            }
            return .pool(cpus)
        }
        guard let cpu else { return .hostPassthrough }
        if cpu.hasSuffix(".xml") || FileManager.default.fileExists(atPath: cpu) {
            return .definition(try CPUDefinition(xml: readInput(cpu), source: cpu))
        }
        return .definition(try CPUDefinition(qemuCPU: cpu, map: map))
    }

    /// A short name for the chosen mode, for tables.
    var label: String {
        if compat { return "compatibility mode" }
        if !pool.isEmpty { return "pool of " + pool.map { URL(fileURLWithPath: $0).lastPathComponent }.joined(separator: ", ") }
        return cpu.map { "--cpu \($0)" } ?? "host passthrough"
    }
}
