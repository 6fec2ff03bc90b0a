import Foundation
import TernCPU
import TernHypervisor

/// What this host is and can offer a guest: its CPU (real, or a recorded processor standing in
/// for it), its topology, and the accelerator it can run guests with.
public struct HostCapabilities: Sendable {
    public var map: CPUMap
    public var host: HostDescription
    public var accelerator: Accelerator
    /// Why that accelerator was chosen, in one sentence.
    public var acceleratorReason: String
    public var topology: CPUDefinition.Topology

    /// What guests may get here: the hypervisor's offer limited to the host CPU (or to the
    /// recorded CPU standing in for it), with the host's vendor and signature. Nil until a
    /// hypervisor has been asked (CPU-only commands do not start one).
    public var guestOffer: ResolvedCPU?

    /// Reads this host, or a recorded processor from `hostCPUFile` standing in for it.
    public static func probe(
        map: CPUMap, hostCPUFile: String?, accelerator: Accelerator, acceleratorReason: String
    ) throws -> HostCapabilities {
        let host: HostDescription
        if let hostCPUFile {
            let text: String
            do {
                text = try String(contentsOfFile: hostCPUFile, encoding: .utf8)
            } catch {
                throw HostError.unreadableFile(path: hostCPUFile, reason: error.localizedDescription)
            }
            host = try map.hostDescription(xml: text, source: hostCPUFile)
        } else {
            let table = HostCPU.readCPUID()
            host = HostDescription(cpu: map.resolve(table: table), table: table, definition: nil, source: "this host")
        }
        return HostCapabilities(
            map: map, host: host, accelerator: accelerator, acceleratorReason: acceleratorReason, topology: readTopology())
    }

    /// Limits the hypervisor's offer to this host's CPU and records it as ``guestOffer``.
    ///
    /// The CPUID "hypervisor present" bit is kept even though no physical processor reports it.
    public mutating func limit(hypervisorOffer: ResolvedCPU) {
        var features = hypervisorOffer.features.intersection(host.cpu.features)
        if let bit = map.registry.feature(named: "hypervisor"), hypervisorOffer.features.contains(bit) {
            features.insert(bit)
        }
        guestOffer = ResolvedCPU(vendor: host.cpu.vendor, signature: host.cpu.signature, features: features)
    }

    static func readTopology() -> CPUDefinition.Topology {
        let count = ProcessInfo.processInfo.activeProcessorCount
        var packages = Set<String>()
        var threadsPerCore = 1
        for cpu in 0..<count {
            let base = "/sys/devices/system/cpu/cpu\(cpu)/topology/"
            if let package = try? String(contentsOfFile: base + "physical_package_id", encoding: .utf8) {
                packages.insert(package.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            if cpu == 0, let siblings = try? String(contentsOfFile: base + "thread_siblings_list", encoding: .utf8) {
                threadsPerCore = max(1, siblingCount(siblings))
            }
        }
        let sockets = max(1, packages.count)
        let cores = max(1, count / sockets / threadsPerCore)
        return CPUDefinition.Topology(sockets: sockets, dies: 1, cores: cores, threads: threadsPerCore)
    }

    private static func siblingCount(_ list: String) -> Int {
        list.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").reduce(0) { total, part in
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            return total + (bounds.count == 2 ? bounds[1] - bounds[0] + 1 : 1)
        }
    }

    /// The host CPU as libvirt's capabilities describe it: model, vendor, signature, topology
    /// and the features beyond the model.
    public func hostCPUDefinition() throws(CPUError) -> CPUDefinition {
        var definition = try map.describe(host.cpu, kind: .host)
        definition.arch = "x86_64"
        definition.signature = host.cpu.signature
        definition.topology = topology
        return definition
    }

    /// libvirt's capabilities XML for this host.
    public func capabilitiesXML() throws(CPUError) -> String {
        var out = "<capabilities>\n\n  <host>\n"
        out += try hostCPUDefinition().xml(indent: 4)
        out += "    <migration_features>\n      <live/>\n      <uri_transports>\n"
        out += "        <uri_transport>tcp</uri_transport>\n      </uri_transports>\n    </migration_features>\n"
        out += "  </host>\n\n"
        out += "  <guest>\n    <os_type>hvm</os_type>\n    <arch name='x86_64'>\n      <wordsize>64</wordsize>\n"
        if let emulator = Self.emulatorPath { out += "      <emulator>\(emulator)</emulator>\n" }
        out += "      <domain type='qemu'/>\n"
        if accelerator == .kvm { out += "      <domain type='kvm'/>\n" }
        out += "    </arch>\n  </guest>\n\n</capabilities>\n"
        return out
    }

    /// Where QEMU's x86 system emulator is, if installed.
    public static var emulatorPath: String? {
        ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }
}
