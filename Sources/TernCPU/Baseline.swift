/// Computing the CPU that every host of a pool can offer (`virsh cpu-baseline`).
extension CPUMap {
    /// The feature intersection of `cpus` and their common vendor.
    ///
    /// This is the hot path of a baseline over many hosts: one bitmap intersection per host.
    ///
    /// - Throws: ``CPUError/emptyPool``, ``CPUError/mixedVendors(_:)``.
    public func intersect(_ cpus: [ResolvedCPU]) throws(CPUError) -> ResolvedCPU {
        guard var result = cpus.first else { throw .emptyPool }
        var vendors: [String] = []
        for cpu in cpus {
            if let vendor = cpu.vendor, !vendors.contains(vendor) { vendors.append(vendor) }
        }
        if vendors.count > 1 { throw .mixedVendors(vendors) }
        for cpu in cpus.dropFirst() {
            result.features.formIntersection(cpu.features)
            if result.signature != cpu.signature { result.signature = nil }
        }
        result.vendor = vendors.first
        return result
    }

    /// The baseline of host CPU descriptions: a guest CPU definition (model + `require`
    /// features, `match='exact'`) that every one of them can run.
    ///
    /// Follows libvirt's rules: the input models are preferred (when all inputs name the same
    /// model, it is chosen and marked `fallback='forbid'`, with what the intersection lacks listed
    /// as `disable`); `<vendor>` is printed only when every input names one. Unlike libvirt, a
    /// `disable` or `forbid` feature of an input is honoured rather than counted as present, and
    /// inputs may omit `<arch>`.
    ///
    /// - Parameters:
    ///   - expandFeatures: list every feature, the model's included (`--features`).
    ///   - migratable: leave out features that cannot be migrated (`--migratable`).
    /// - Throws: ``CPUError/emptyPool``, ``CPUError/mixedVendors(_:)``, ``CPUError/noUsableModel(_:)``
    ///   and lookup errors.
    public func baseline(_ cpus: [CPUDefinition], expandFeatures: Bool = false, migratable: Bool = false)
        throws(CPUError) -> CPUDefinition
    {
        guard !cpus.isEmpty else { throw .emptyPool }
        var resolved: [ResolvedCPU] = []
        resolved.reserveCapacity(cpus.count)
        for cpu in cpus {
            var one = try resolve(cpu)
            if let explicit = cpu.vendor, let name = cpu.model, let modelVendor = try lookupModel(name).vendor,
                try lookupVendor(explicit).name != modelVendor
            {
                throw .mixedVendors([try lookupVendor(explicit).name, "\(modelVendor) (model \(name))"])
            }
            // The first CPU's model does not decide the vendor; an explicit <vendor> does.
            if resolved.isEmpty && cpu.vendor == nil { one.vendor = nil }
            resolved.append(one)
        }
        let common = try intersect(resolved)
        if common.features.isEmpty {
            throw .noUsableModel("the CPUs have no feature in common")
        }
        var preferred: [String] = []
        for cpu in cpus {
            if let model = cpu.model, !preferred.contains(model) { preferred.append(model) }
        }
        var definition = try describe(
            ResolvedCPU(vendor: common.vendor, features: common.features), kind: .guest, preferred: preferred,
            migratable: migratable)
        definition.fallback = preferred.count == 1 && definition.model == preferred[0] ? .forbid : .allow
        if !cpus.allSatisfy({ $0.vendor != nil }) { definition.vendor = nil }
        if expandFeatures { definition = try self.expandFeatures(definition) }
        return definition
    }
}
