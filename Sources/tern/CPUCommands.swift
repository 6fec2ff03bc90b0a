import ArgumentParser
import Foundation
import TernCPU
import TernHost

struct Capabilities: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capabilities",
        abstract: "Print this host's capabilities as libvirt capabilities XML (like 'virsh capabilities').")

    @OptionGroup var map: MapOptions
    @OptionGroup var host: HostOptions
    @Flag(help: "Print JSON instead of XML.") var json = false

    func run() throws {
        let caps = try host.capabilities(map: map.load())
        if json {
            let cpu = try caps.hostCPUDefinition()
            try printJSON(
                CapabilitiesJSON(
                    arch: "x86_64", model: cpu.model, vendor: cpu.vendor, signature: cpu.signature,
                    features: cpu.features.map(\.name), allFeatures: caps.map.registry.names(of: caps.host.cpu.features),
                    accelerator: caps.accelerator.rawValue, acceleratorReason: caps.acceleratorReason,
                    domainType: caps.accelerator.domainType, hostSource: caps.host.source))
        } else {
            print(try caps.capabilitiesXML(), terminator: "")
        }
    }
}

struct CapabilitiesJSON: Encodable {
    var arch: String
    var model: String?
    var vendor: String?
    var signature: CPUSignature?
    var features: [String]
    var allFeatures: [String]
    var accelerator: String
    var acceleratorReason: String
    var domainType: String
    var hostSource: String
}

struct DomCapabilities: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domcapabilities",
        abstract: "Print what a VM may use on this host (like 'virsh domcapabilities').",
        discussion: "Asks QEMU what it can give a guest under the accelerator it will use (cached after the first time).")

    @OptionGroup var map: MapOptions
    @OptionGroup var host: HostOptions

    func run() async throws {
        let (caps, hypervisor) = try await host.capabilitiesWithHypervisor(map: map.load())
        print(try DomainCapabilities(caps, qemuVersion: hypervisor.capabilities.version).xml(), terminator: "")
    }
}

struct CPUCompare: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-compare",
        abstract: "Compare a CPU description with the host CPU (like 'virsh cpu-compare').",
        discussion: """
            FILE holds a <cpu> element, alone or inside domain or capabilities XML. The answer is \
            identical, superset (the host has more) or incompatible (with the features at fault). \
            Exit status: 0 identical or superset, 1 incompatible (with --error) or an error.
            """)

    @Argument(help: ArgumentHelp("The CPU description ('-' for standard input).", valueName: "file"))
    var file: String
    @OptionGroup var map: MapOptions
    @OptionGroup var host: HostOptions
    @Flag(help: "Exit with status 1 when the CPUs are incompatible.") var error = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let cpuMap = try map.load()
        let caps = try host.capabilities(map: cpuMap)
        let cpu = try CPUDefinition(xml: readInput(file), source: file)
        let result = try cpuMap.compare(host: caps.host.cpu, cpu: cpu)
        if json {
            try printJSON(result)
        } else {
            switch result.result {
            case .identical: print("CPU described in \(file) is identical to host CPU")
            case .superset: print("Host CPU is a superset of CPU described in \(file)")
            case .incompatible:
                print("CPU described in \(file) is incompatible with host CPU")
                if let reason = result.reason { print(reason) }
            }
        }
        if error && result.result == .incompatible { throw ExitCode(1) }
    }
}

extension CPUComparison: Encodable {
    enum CodingKeys: String, CodingKey { case result, reason, missing, forbidden, extra }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(result.rawValue, forKey: .result)
        try c.encodeIfPresent(reason, forKey: .reason)
        try c.encode(missing, forKey: .missing)
        try c.encode(forbidden, forKey: .forbidden)
        try c.encode(extra, forKey: .extra)
    }
}

struct CPUBaseline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-baseline",
        abstract: "Compute the CPU every given host can offer (like 'virsh cpu-baseline').",
        discussion: """
            FILE holds any number of <cpu> elements (host CPU descriptions, e.g. from several \
            hosts' capabilities XML). The result is a guest <cpu> definition: a model plus the \
            features every host has beyond it.
            """)

    @Argument(help: ArgumentHelp("The host CPU descriptions ('-' for standard input).", valueName: "file"))
    var file: String
    @OptionGroup var map: MapOptions
    @Flag(help: "List every feature, the model's own included.") var features = false
    @Flag(help: "Leave out features that cannot be migrated (invtsc …).") var migratable = false
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: .hidden) var timing = false

    func run() throws {
        let clock = ContinuousClock()
        let start = clock.now
        let cpuMap = try map.load()
        let loaded = clock.now
        let cpus = try CPUDefinition.all(xml: readInput(file), source: file)
        let parsed = clock.now
        let baseline = try cpuMap.baseline(cpus, expandFeatures: features, migratable: migratable)
        if timing {
            let done = clock.now
            printError(
                "timing: hosts=\(cpus.count) map=\(ms(loaded - start)) parse=\(ms(parsed - loaded)) baseline=\(ms(done - parsed))")
        }
        if json {
            let resolved = try cpuMap.resolve(baseline)
            try printJSON(
                BaselineJSON(
                    model: baseline.model, vendor: baseline.vendor,
                    features: baseline.features.filter { $0.policy == .require }.map(\.name),
                    disabled: baseline.features.filter { $0.policy == .disable }.map(\.name),
                    allFeatures: cpuMap.registry.names(of: resolved.features), hosts: cpus.count))
        } else {
            print(baseline.xml(), terminator: "")
        }
    }
}

struct BaselineJSON: Encodable {
    var model: String?
    var vendor: String?
    var features: [String]
    var disabled: [String]
    var allFeatures: [String]
    var hosts: Int
}

struct CPUModels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-models", abstract: "List the CPU models Tern knows (like 'virsh cpu-models x86_64').")

    @OptionGroup var map: MapOptions
    @Option(help: "Only models of this vendor (Intel, AMD, Hygon; 'generic' for models of no vendor).")
    var vendor: String?
    @Flag(help: "Also show aliases, vendor and signature.") var long = false
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let cpuMap = try map.load()
        var models = cpuMap.models
        if let vendor {
            if vendor.lowercased() == "generic" {
                models = models.filter { $0.vendor == nil }
            } else {
                let name = try cpuMap.lookupVendor(vendor).name
                models = models.filter { $0.vendor == name }
            }
        }
        if json {
            try printJSON(
                models.map {
                    ModelJSON(
                        name: $0.name, aliases: $0.aliases, vendor: $0.vendor, signatures: $0.signatures,
                        features: cpuMap.registry.names(of: $0.features))
                })
            return
        }
        for model in models {
            if long {
                let signature = model.signatures.first.map { "family \($0.family) model \($0.model)" } ?? "-"
                let aliases = model.aliases.isEmpty ? "" : "  (" + model.aliases.joined(separator: ", ") + ")"
                print(
                    model.name.padding(toLength: 28, withPad: " ", startingAt: 0)
                        + (model.vendor ?? "generic").padding(toLength: 8, withPad: " ", startingAt: 0)
                        + signature.padding(toLength: 22, withPad: " ", startingAt: 0)
                        + "\(model.features.count) features" + aliases)
            } else {
                print(model.name)
            }
        }
    }
}

struct ModelJSON: Encodable {
    var name: String
    var aliases: [String]
    var vendor: String?
    var signatures: [CPUSignature]
    var features: [String]
}

struct CPUFeatures: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-features",
        abstract: "List every CPU feature Tern knows, with its CPUID or MSR bit and other spellings.")

    @OptionGroup var map: MapOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let cpuMap = try map.load()
        let features = cpuMap.registry.features
        if json {
            try printJSON(
                features.map {
                    FeatureJSON(
                        name: $0.name, bits: $0.bits.map(\.description), aliases: $0.aliases, qemu: $0.qemuName,
                        linux: $0.linuxName, migratable: $0.migratable)
                })
            return
        }
        for feature in features {
            var line = feature.name.padding(toLength: 24, withPad: " ", startingAt: 0)
            line += feature.bits.map(\.description).joined(separator: " ").padding(toLength: 34, withPad: " ", startingAt: 0)
            let others = Set(feature.aliases + [feature.qemuName, feature.linuxName].compactMap { $0 })
                .subtracting([feature.name]).sorted()
            if !others.isEmpty { line += " aka " + others.joined(separator: ", ") }
            if !feature.migratable { line += " [not migratable]" }
            print(line)
        }
    }
}

struct FeatureJSON: Encodable {
    var name: String
    var bits: [String]
    var aliases: [String]
    var qemu: String?
    var linux: String?
    var migratable: Bool
}

/// A duration in milliseconds with two decimals, e.g. "12.34ms".
func ms(_ duration: Duration) -> String {
    let value = Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    return String(format: "%.2fms", value)
}
