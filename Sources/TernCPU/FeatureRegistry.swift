/// Every feature a ``CPUMap`` knows, with lookup by canonical name and by alias.
///
/// Corresponds to libvirt's `x86_features.xml`. Lookup is exact first, then by alias, then
/// loosely (ignoring case and treating `_` and `-` alike), so `sse4_1`, `SSE4.1` and `pni`
/// all find their feature.
public struct FeatureRegistry: Sendable {
    /// All features, in registry order (a feature's `index` is its position here).
    public let features: [Feature]
    private let byName: [String: Int]
    private let byLooseName: [String: Int]

    /// Builds a registry. Fails when two features share a name or alias.
    public init(features: [Feature]) throws(CPUError) {
        var byName: [String: Int] = [:]
        var byLooseName: [String: Int] = [:]
        var ordered: [Feature] = []
        for (index, var feature) in features.enumerated() {
            feature.index = index
            ordered.append(feature)
            if let existing = byName[feature.name], existing != index {
                throw .invalidCPUMap(path: "features", reason: "feature '\(feature.name)' is defined twice")
            }
            byName[feature.name] = index
        }
        // Aliases never shadow a canonical name.
        for feature in ordered {
            for alias in feature.aliases + [feature.qemuName, feature.linuxName].compactMap({ $0 })
            where byName[alias] == nil {
                byName[alias] = feature.index
            }
        }
        for (name, index) in byName {
            let loose = normalizedName(name)
            if byLooseName[loose] == nil || ordered[index].name == name { byLooseName[loose] = index }
        }
        self.features = ordered
        self.byName = byName
        self.byLooseName = byLooseName
    }

    /// The feature called `name` (canonical name, alias, or loose spelling), or nil.
    public func feature(named name: String) -> Feature? {
        if let index = byName[name] ?? byLooseName[normalizedName(name)] { return features[index] }
        return nil
    }

    /// The feature called `name`, or an ``CPUError/unknownFeature(_:suggestions:)`` with close names.
    public func lookup(_ name: String) throws(CPUError) -> Feature {
        if let feature = feature(named: name) { return feature }
        throw .unknownFeature(name, suggestions: closeNames(to: name, in: features.map(\.name)))
    }

    /// The features of `set`, in registry order.
    public func features(in set: FeatureSet) -> [Feature] { set.indices.map { features[$0] } }

    /// The canonical names of `set`, in registry order.
    public func names(of set: FeatureSet) -> [String] { set.indices.map { features[$0].name } }

    /// The set of the named features.
    public func set(of names: [String]) throws(CPUError) -> FeatureSet {
        var set = FeatureSet()
        for name in names { set.insert(try lookup(name)) }
        return set
    }

    /// The features whose bits are all set in `table`.
    public func features(of table: CPUIDTable) -> FeatureSet {
        var set = FeatureSet()
        for feature in features where !feature.bits.isEmpty {
            if feature.bits.allSatisfy({ table.isSet($0) }) { set.insert(feature.index) }
        }
        return set
    }

    /// The features that cannot be migrated (libvirt's `migratable='no'`).
    public var nonMigratable: FeatureSet {
        FeatureSet(indices: features.filter { !$0.migratable }.map(\.index))
    }
}

extension CPUIDTable {
    /// True when `bit` is set in this table.
    public func isSet(_ bit: FeatureBit) -> Bool {
        switch bit {
        case let .cpuid(leaf, register, bit):
            return leaves[leaf].map { $0[register] & (1 << UInt32(bit)) != 0 } ?? false
        case let .msr(index, bit):
            return msrs[index].map { $0 & (1 << UInt64(bit)) != 0 } ?? false
        }
    }

    /// Sets or clears `bit` in this table.
    public mutating func set(_ bit: FeatureBit, to on: Bool) {
        switch bit {
        case let .cpuid(leaf, register, bit):
            var regs = self[leaf]
            if on { regs[register] |= 1 << UInt32(bit) } else { regs[register] &= ~(1 << UInt32(bit)) }
            self[leaf] = regs
        case let .msr(index, bit):
            var value = msrs[index] ?? 0
            if on { value |= 1 << UInt64(bit) } else { value &= ~(1 << UInt64(bit)) }
            msrs[index] = value
        }
    }
}
