/// The processor compatibility check that guards every restore and incoming migration.
///
/// The rule (MISSION.md §2): the destination must offer every feature the VM has now — the same
/// set or a superset — and be of the same vendor. Nothing else matters: a VM whose CPU was
/// reduced by compatibility or pool mode carries that reduced CPU with it.
public struct MigrationVerdict: Equatable, Sendable, CustomStringConvertible {
    /// Whether the VM may move.
    public var allowed: Bool
    /// Features the VM has that the destination lacks.
    public var missing: [String]
    /// Why the move is refused (nil when allowed).
    public var reason: String?

    public var description: String { allowed ? "compatible" : "refused: \(reason ?? "incompatible")" }
}

extension CPUMap {
    /// Checks whether a VM whose processor is `vm` can run on a host offering `destination`.
    public func checkMigration(vm: ResolvedCPU, destination: ResolvedCPU) -> MigrationVerdict {
        if vm.vendor != nil && destination.vendor != nil && vm.vendor != destination.vendor {
            return MigrationVerdict(
                allowed: false, missing: [],
                reason: "the VM's processor is \(vm.vendor ?? "") and the destination's is \(destination.vendor ?? ""): "
                    + "moving between vendors is never allowed")
        }
        let missing = vm.features.subtracting(destination.features).subtracting(osControlledFeatures)
        if missing.isEmpty { return MigrationVerdict(allowed: true, missing: [], reason: nil) }
        let names = registry.names(of: missing)
        return MigrationVerdict(
            allowed: false, missing: names,
            reason: "the destination lacks \(names.count) feature\(names.count == 1 ? "" : "s") the VM has: "
                + names.joined(separator: ", "))
    }
}

extension CPUMap {
    /// Bits that mirror the guest operating system's own settings rather than the processor:
    /// OSXSAVE (CR4.OSXSAVE, with XSAVE) and OSPKE (CR4.PKE, with PKU). The hypervisor cannot
    /// set them; they follow the feature they depend on, and the migration check ignores them.
    public static let osControlledFeatures: [String: String] = ["osxsave": "xsave", "ospke": "pku"]

    /// ``osControlledFeatures`` as a set of this map.
    public var osControlledFeatures: FeatureSet {
        FeatureSet(indices: Self.osControlledFeatures.keys.compactMap { registry.feature(named: $0)?.index })
    }
}
