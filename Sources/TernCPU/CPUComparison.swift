/// The answer to "can this host run that CPU?", as `virsh cpu-compare` gives it.
public struct CPUComparison: Equatable, Sendable {
    /// libvirt's three outcomes.
    public enum Result: String, Sendable {
        /// The host offers exactly the described CPU.
        case identical
        /// The host offers everything the described CPU needs, and more.
        case superset
        /// The host cannot run the described CPU.
        case incompatible
    }

    public var result: Result
    /// Why the CPU is incompatible (nil otherwise), in one sentence.
    public var reason: String?
    /// Features the CPU requires that the host lacks.
    public var missing: [String]
    /// Features the CPU forbids that the host has.
    public var forbidden: [String]
    /// Features the host has beyond the CPU (why a strict match fails, or what "superset" means).
    public var extra: [String]
}

extension CPUMap {
    /// Compares a guest CPU definition (or another host description) with a host CPU, with
    /// libvirt's semantics: forbidden features the host has, or required ones it lacks, make the
    /// CPU incompatible; host features beyond the definition make the host a superset, which
    /// `match='strict'` turns into incompatible. A vendor or architecture mismatch is
    /// incompatible. `force` features are not checked against the host; the mode is not looked
    /// at (a `host-passthrough` definition without a model compares as a superset).
    ///
    /// - Throws: ``CPUError/unknownModel(_:suggestions:)`` and ``CPUError/unknownFeature(_:suggestions:)``
    ///   for names the map does not know.
    public func compare(host: ResolvedCPU, cpu: CPUDefinition) throws(CPUError) -> CPUComparison {
        func incompatible(_ reason: String, missing: [String] = [], forbidden: [String] = [], extra: [String] = [])
            -> CPUComparison
        {
            CPUComparison(result: .incompatible, reason: reason, missing: missing, forbidden: forbidden, extra: extra)
        }
        if let arch = cpu.arch, !["x86_64", "i686", "i386", "x86"].contains(arch) {
            return incompatible("CPU arch \(arch) does not match host arch x86_64")
        }
        if let vendor = cpu.vendor {
            let wanted = try lookupVendor(vendor).name
            if host.vendor != wanted {
                return incompatible("host CPU vendor \(host.vendor ?? "unknown") does not match required CPU vendor \(wanted)")
            }
        }
        var model = FeatureSet()
        if let name = cpu.model {
            let definition = try lookupModel(name)
            model = definition.features
        }
        var byPolicy: [CPUDefinition.Policy: FeatureSet] = [:]
        for request in cpu.features {
            let feature = try registry.lookup(request.name)
            byPolicy[request.policy ?? .require, default: FeatureSet()].insert(feature)
        }
        let force = byPolicy[.force] ?? FeatureSet()
        let optional = byPolicy[.optional] ?? FeatureSet()
        let disable = byPolicy[.disable] ?? FeatureSet()
        let forbid = byPolicy[.forbid] ?? FeatureSet()
        var require = model.union(byPolicy[.require] ?? FeatureSet())
        require.subtract(force)
        require.subtract(optional)
        require.subtract(disable)

        let forbiddenPresent = forbid.intersection(host.features)
        if !forbiddenPresent.isEmpty {
            let names = registry.names(of: forbiddenPresent)
            return incompatible("Host CPU provides forbidden features: \(names.joined(separator: ", "))", forbidden: names)
        }
        let missing = require.subtracting(host.features)
        if !missing.isEmpty {
            let names = registry.names(of: missing)
            return incompatible("Host CPU does not provide required features: \(names.joined(separator: ", "))", missing: names)
        }
        let extra = host.features.subtracting(require).subtracting(optional).subtracting(disable).subtracting(force)
        let extraNames = registry.names(of: extra)
        if extra.isEmpty {
            return CPUComparison(result: .identical, reason: nil, missing: [], forbidden: [], extra: [])
        }
        if cpu.kind == .guest && cpu.match == .strict {
            return incompatible(
                "Host CPU does not strictly match guest CPU: Extra features: \(extraNames.joined(separator: ", "))",
                extra: extraNames)
        }
        return CPUComparison(result: .superset, reason: nil, missing: [], forbidden: [], extra: extraNames)
    }
}
