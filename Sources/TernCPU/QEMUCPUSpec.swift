/// QEMU's `-cpu` syntax, both ways: `Model[,+feat][,-feat][,feat=on|off][,enforce]…`.
///
/// `host` and `max` read as host-passthrough and maximum. `+feat` and `feat=on` read as
/// policy `require` (QEMU with `enforce` refuses to start when the host lacks it), `-feat` and
/// `feat=off` as `disable`. `vendor=` sets the vendor string the guest sees; `enforce` and
/// `check` read as `check='full'`; `migratable=` as libvirt's `migratable`.
extension CPUDefinition {
    /// Reads a QEMU `-cpu` string, checking every feature name against `map`.
    ///
    /// - Throws: ``CPUError/malformedCPUSpec(_:reason:)``, ``CPUError/unknownModel(_:suggestions:)``,
    ///   ``CPUError/unknownFeature(_:suggestions:)``.
    public init(qemuCPU spec: String, map: CPUMap) throws(CPUError) {
        let parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, !first.isEmpty else {
            throw .malformedCPUSpec(spec, reason: "the model name is missing")
        }
        self.init(kind: .guest)
        switch first {
        case "host": mode = .hostPassthrough
        case "max": mode = .maximum
        default:
            model = try map.lookupModel(first).name
            match = .exact
        }
        for part in parts.dropFirst() {
            if part.isEmpty { throw .malformedCPUSpec(spec, reason: "empty option between commas") }
            var name = part
            var on: Bool
            if part.hasPrefix("+") || part.hasPrefix("-") {
                on = part.hasPrefix("+")
                name = String(part.dropFirst())
            } else if let eq = part.firstIndex(of: "=") {
                name = String(part[..<eq])
                let value = String(part[part.index(after: eq)...])
                switch name {
                case "vendor":
                    guard value.utf8.count == 12 else {
                        throw .malformedCPUSpec(spec, reason: "vendor must be exactly 12 characters")
                    }
                    vendorID = value
                    continue
                case "migratable":
                    migratable = ["on", "true", "yes"].contains(value)
                    continue
                case "model-id", "family", "model", "stepping", "level", "xlevel", "phys-bits":
                    throw .malformedCPUSpec(spec, reason: "the property '\(name)' is set by Tern, not in a CPU definition")
                default:
                    switch value {
                    case "on", "true", "yes": on = true
                    case "off", "false", "no": on = false
                    default: throw .malformedCPUSpec(spec, reason: "'\(part)': expected \(name)=on or \(name)=off")
                    }
                }
            } else if part == "enforce" || part == "check" {
                check = .full
                continue
            } else {
                on = true
            }
            let feature = try map.registry.lookup(name)
            features.removeAll { $0.name == feature.name }
            features.append(FeatureRequest(name: feature.name, policy: on ? .require : .disable))
        }
        if mode != .custom && !features.isEmpty {
            // host,-feat: a passthrough CPU with features taken away (libvirt allows disable/require here).
            for request in features where request.policy == .require {
                throw .malformedCPUSpec(spec, reason: "'+\(request.name)' adds nothing to '\(first)', which already has every host feature")
            }
        }
    }

    /// This definition in QEMU's `-cpu` syntax, with QEMU's feature names.
    ///
    /// `optional` features and `forbid` have no QEMU spelling; they must be resolved against a
    /// host first (see ``CPUMap/guestCPU(_:host:)``), and are left out here.
    public func qemuCPU(map: CPUMap) -> String {
        var parts: [String]
        switch mode {
        case .hostPassthrough, .hostModel: parts = ["host"]
        case .maximum: parts = ["max"]
        case .custom: parts = [model ?? "max"]
        }
        if let vendorID { parts.append("vendor=\(vendorID)") }
        for request in features {
            let name = map.registry.feature(named: request.name)?.qemuName ?? request.name
            switch request.policy ?? .require {
            case .force, .require: parts.append("\(name)=on")
            case .disable, .forbid: parts.append("\(name)=off")
            case .optional: continue
            }
        }
        if check == .full { parts.append("enforce") }
        return parts.joined(separator: ",")
    }
}
