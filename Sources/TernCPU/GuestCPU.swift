/// How a VM's processor is chosen: the four ways Tern offers.
public enum GuestCPUConfig: Equatable, Sendable {
    /// The guest gets every feature of the host (libvirt's `host-passthrough`).
    case hostPassthrough
    /// A libvirt `<cpu>` definition: a named model with feature policies (or `host-model`).
    case definition(CPUDefinition)
    /// Classic processor compatibility mode: the host's features minus a fixed per-vendor mask,
    /// with an 8-byte CLFLUSH line size (see ``CompatibilityMask``).
    case compatibility
    /// Pool mode: exactly the features every CPU of the pool offers (dynamic processor
    /// compatibility; an EVC-style baseline).
    case pool([ResolvedCPU])
}

/// The processor a VM gets: fixed when it boots, kept until it restarts, carried along when it
/// moves.
public struct GuestCPU: Equatable, Sendable {
    /// The CPU model QEMU should start from, or nil to start from the host's CPU.
    public var model: String?
    /// The vendor the guest sees.
    public var vendor: String?
    /// The signature the guest sees (nil: the host's).
    public var signature: CPUSignature?
    /// Exactly the features the guest sees.
    public var features: FeatureSet
    /// The CLFLUSH line size the guest should see in bytes, when it differs from the host's.
    public var clflushLineSize: Int?

    public init(
        model: String?, vendor: String?, signature: CPUSignature?, features: FeatureSet, clflushLineSize: Int? = nil
    ) {
        self.model = model
        self.vendor = vendor
        self.signature = signature
        self.features = features
        self.clflushLineSize = clflushLineSize
    }

    /// The guest CPU as a resolved CPU (for the migration check and baselines).
    public var resolved: ResolvedCPU { ResolvedCPU(vendor: vendor, signature: signature, features: features) }
}

extension CPUMap {
    /// Computes the CPU a VM gets on `host` under `config`.
    ///
    /// - Throws: ``CPUError/hostCannotOffer(model:missing:)`` when the host lacks a required
    ///   feature (they are named), ``CPUError/forbiddenFeaturePresent(_:)``,
    ///   ``CPUError/mixedVendors(_:)`` for a pool of another vendor, ``CPUError/unsupported(_:)``
    ///   for compatibility mode on a vendor without a mask, and lookup errors.
    public func guestCPU(_ config: GuestCPUConfig, host: ResolvedCPU) throws(CPUError) -> GuestCPU {
        switch config {
        case .hostPassthrough:
            return GuestCPU(model: nil, vendor: host.vendor, signature: host.signature, features: host.features)

        case .compatibility:
            guard let vendor = host.vendor, let mask = CompatibilityMask.forVendor(vendor) else {
                throw .unsupported(
                    "processor compatibility mode needs an Intel, AMD or Hygon host (this host's vendor: \(host.vendor ?? "unknown"))")
            }
            var features = host.features
            features.subtract(try mask.withheld(in: registry))
            return GuestCPU(
                model: nil, vendor: host.vendor, signature: host.signature, features: features,
                clflushLineSize: CompatibilityMask.clflushLineSize)

        case .pool(let pool):
            let common = try intersect(pool)
            if let vendor = common.vendor, let hostVendor = host.vendor, vendor != hostVendor {
                throw .mixedVendors([vendor, hostVendor])
            }
            let missing = common.features.subtracting(host.features)
            if !missing.isEmpty { throw .hostNotInPool(missing: registry.names(of: missing)) }
            return GuestCPU(model: nil, vendor: host.vendor, signature: host.signature, features: common.features)

        case .definition(let definition):
            return try guestCPU(definition: definition, host: host)
        }
    }

    private func guestCPU(definition: CPUDefinition, host: ResolvedCPU) throws(CPUError) -> GuestCPU {
        switch definition.mode {
        case .hostPassthrough, .maximum:
            var features = host.features
            if definition.migratable == true { features.subtract(registry.nonMigratable) }
            return GuestCPU(model: nil, vendor: host.vendor, signature: host.signature, features: features)
        case .hostModel:
            var features = host.features
            features.subtract(registry.nonMigratable)
            for request in definition.features {
                let feature = try registry.lookup(request.name)
                if request.policy == .disable || request.policy == .forbid { features.remove(feature) }
            }
            return GuestCPU(model: nil, vendor: host.vendor, signature: host.signature, features: features)
        case .custom:
            break
        }
        guard let name = definition.model else {
            throw .unsupported("a custom CPU definition needs a model")
        }
        let model = try lookupModel(name)
        var features = model.features
        var required = model.features
        var forbidden = FeatureSet()
        for request in definition.features {
            let feature = try registry.lookup(request.name)
            switch request.policy ?? .require {
            case .force:
                features.insert(feature)
                required.remove(feature)
            case .require:
                features.insert(feature)
                required.insert(feature)
            case .optional:
                required.remove(feature)
                if host.features.contains(feature) { features.insert(feature) } else { features.remove(feature) }
            case .disable:
                features.remove(feature)
                required.remove(feature)
            case .forbid:
                features.remove(feature)
                required.remove(feature)
                forbidden.insert(feature)
            }
        }
        if let vendor = definition.vendor {
            let wanted = try lookupVendor(vendor).name
            if let hostVendor = host.vendor, hostVendor != wanted { throw .mixedVendors([wanted, hostVendor]) }
        }
        let missing = required.subtracting(host.features)
        if !missing.isEmpty { throw .hostCannotOffer(model: model.name, missing: registry.names(of: missing)) }
        let present = forbidden.intersection(host.features)
        if !present.isEmpty { throw .forbiddenFeaturePresent(registry.names(of: present)) }
        return GuestCPU(
            model: model.name, vendor: model.vendor ?? host.vendor, signature: model.signatures.first,
            features: features)
    }

    /// The CPUID table a guest with `cpu` sees: the host's table with every known feature bit
    /// set exactly as `cpu` says, its vendor string and signature, and the CLFLUSH line size.
    public func cpuidTable(for cpu: GuestCPU, host: CPUIDTable) -> CPUIDTable {
        var table = host
        for feature in registry.features {
            let on = cpu.features.contains(feature)
            for bit in feature.bits { table.set(bit, to: on) }
        }
        if let vendor = cpu.vendor, let string = self.vendor(named: vendor)?.string { table.setVendorString(string) }
        if let signature = cpu.signature {
            var leaf1 = table[CPUIDLeaf(1)]
            leaf1.eax = (leaf1.eax & 0xf000_3000) | signature.leaf1EAX
            table[CPUIDLeaf(1)] = leaf1
        }
        if let size = cpu.clflushLineSize { table.setCLFLUSHLineSize(size) }
        // Make sure the highest basic and extended leaves cover every leaf that carries a bit.
        let basicMax = table.leaves.keys.filter { $0.function < 0x4000_0000 }.map(\.function).max() ?? 0
        let extendedMax = table.leaves.keys.filter { $0.function >= 0x8000_0000 }.map(\.function).max() ?? 0
        if table[CPUIDLeaf(0)].eax < basicMax { table[CPUIDLeaf(0)].eax = basicMax }
        if extendedMax > 0 && table[CPUIDLeaf(0x8000_0000)].eax < extendedMax {
            table[CPUIDLeaf(0x8000_0000)].eax = extendedMax
        }
        return table
    }
}
