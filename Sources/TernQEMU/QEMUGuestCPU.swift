import TernCPU
import TernHypervisor

/// Translates the guest CPU Tern computed into QEMU's `-cpu` option.
///
/// Every feature QEMU has a property for is stated explicitly (`feat=on` or `feat=off`), then
/// `enforce`, so QEMU refuses to start rather than silently give the guest a different CPU.
/// The base is the guest's CPU model when QEMU defines it (for its cache and model-id
/// details), otherwise `max` (TCG) or `host` (KVM); vendor, family, model and stepping are set
/// explicitly whenever Tern knows them.
public struct QEMUGuestCPU: Sendable, Equatable {
    /// The `-cpu` argument.
    public var argument: String
    /// Features of the guest CPU QEMU has no property for (they follow QEMU's defaults).
    public var notControllable: [String]
    /// Parts of the guest CPU QEMU cannot honour, in words (e.g. the CLFLUSH line size).
    public var notHonoured: [String]

    public init(_ cpu: GuestCPU, map: CPUMap, capabilities: QEMUCapabilities) {
        var parts: [String] = []
        if let model = cpu.model, capabilities.unavailableFeatures[model] != nil {
            parts.append(model)
        } else {
            parts.append(capabilities.accelerator == .kvm ? "host" : "max")
        }
        if let vendor = cpu.vendor, let string = map.vendor(named: vendor)?.string { parts.append("vendor=\(string)") }
        if let signature = cpu.signature {
            parts += ["family=\(signature.family)", "model=\(signature.model)", "stepping=\(signature.stepping)"]
        }
        var notControllable: [String] = []
        for feature in map.registry.features {
            let on = cpu.features.contains(feature) || QEMUGuestCPU.alwaysOn.contains(feature.name)
            guard let name = QEMUGuestCPU.propertyName(of: feature, in: capabilities) else {
                if on { notControllable.append(feature.name) }
                continue
            }
            parts.append("\(name)=\(on ? "on" : "off")")
        }
        parts.append("enforce")
        argument = parts.joined(separator: ",")
        self.notControllable = notControllable
        var notHonoured: [String] = []
        if let size = cpu.clflushLineSize, size != 64 {
            notHonoured.append(
                "CLFLUSH line size \(size) bytes: QEMU always reports 64 bytes in CPUID.01H:EBX[15:8]")
        }
        self.notHonoured = notHonoured
    }

    /// Features every guest gets from the hypervisor itself (the CPUID "hypervisor present" bit).
    public static let alwaysOn: Set<String> = ["hypervisor"]

    /// QEMU's property for `feature`, if QEMU has one.
    static func propertyName(of feature: Feature, in capabilities: QEMUCapabilities) -> String? {
        for candidate in [feature.qemuName, feature.name].compactMap({ $0 }) + feature.aliases
        where capabilities.properties[candidate] != nil {
            return candidate
        }
        return nil
    }

    /// The features QEMU can give a guest under this accelerator, as a resolved CPU of `map`.
    public static func offer(_ capabilities: QEMUCapabilities, map: CPUMap) -> FeatureSet {
        var set = FeatureSet()
        for feature in map.registry.features {
            if let name = propertyName(of: feature, in: capabilities), capabilities.properties[name] == true {
                set.insert(feature)
            }
        }
        return set
    }

    /// The features whose bits `featureWords` (QOM `feature-words` of a running vCPU) has set.
    public static func features(fromFeatureWords words: [JSONValue], map: CPUMap) -> FeatureSet {
        var table = CPUIDTable()
        for word in words {
            guard let eax = word["cpuid-input-eax"]?.int, let register = word["cpuid-register"]?.string,
                let reg = CPUIDRegister(rawValue: register.lowercased()), let bits = word["features"]?.int
            else { continue }
            let leaf = CPUIDLeaf(UInt32(truncatingIfNeeded: eax), subleaf: UInt32(word["cpuid-input-ecx"]?.int ?? 0))
            var regs = table[leaf]
            regs[reg] |= UInt32(truncatingIfNeeded: bits)
            table[leaf] = regs
        }
        return map.registry.features(of: table)
    }
}
