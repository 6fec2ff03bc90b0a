import Foundation
import TernCPU

/// Test fixtures and shared maps.
enum Fixture {
    static func url(_ path: String) -> URL {
        Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent(path)
    }

    static func text(_ path: String) throws -> String {
        try String(contentsOf: url(path), encoding: .utf8)
    }

    /// A recorded processor as a host.
    static func dump(_ name: String, map: CPUMap) throws -> HostDescription {
        try map.hostDescription(xml: text("cpuid-dumps/\(name).xml"), source: name)
    }

    static let dumpNames = [
        "Core-i7-2600", "EPYC-7502-32-Core", "EPYC-7601-32-Core", "Hygon-C86-7185-32-core", "Ice-Lake-Server",
        "Opteron-6234", "Phenom-B95", "Xeon-Gold-6148", "Xeon-Platinum-8268",
    ]

    /// Debian's libvirt cpu_map (installed by scripts/install-deps.sh).
    static let libvirtMapDirectory = "/usr/share/libvirt/cpu_map"
}

extension CPUMap {
    /// A resolved CPU from a model name and extra features, for building table rows.
    func cpu(_ model: String, plus: [String] = [], minus: [String] = [], vendor: String? = nil) throws -> ResolvedCPU {
        var cpu = try resolve(CPUDefinition(kind: .host, model: model, vendor: vendor))
        for name in plus { cpu.features.insert(try registry.lookup(name)) }
        for name in minus { cpu.features.remove(try registry.lookup(name)) }
        return cpu
    }

    func names(_ cpu: ResolvedCPU) -> Set<String> { Set(registry.names(of: cpu.features)) }
}

/// The CPUError `body` throws, or nil when it throws nothing (or something else).
func cpuError(_ body: () throws -> Void) -> CPUError? {
    do {
        try body()
        return nil
    } catch let error as CPUError {
        return error
    } catch {
        return nil
    }
}
