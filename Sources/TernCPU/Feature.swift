/// Where one feature lives: a bit of a CPUID output register, or a bit of a feature MSR.
///
/// Corresponds to one `<cpuid …/>` or `<msr …/>` row of a feature in libvirt's
/// `x86_features.xml`.
public enum FeatureBit: Hashable, Sendable, CustomStringConvertible {
    /// Bit `bit` of `register` when CPUID runs with `leaf`.
    case cpuid(leaf: CPUIDLeaf, register: CPUIDRegister, bit: Int)
    /// Bit `bit` (0–63) of the model-specific register `index`.
    case msr(index: UInt32, bit: Int)

    public var description: String {
        switch self {
        case let .cpuid(leaf, register, bit): "CPUID[\(leaf)].\(register.rawValue.uppercased())[\(bit)]"
        case let .msr(index, bit): "MSR[\(hex32(index))][\(bit)]"
        }
    }
}

/// A named x86 processor feature.
///
/// The canonical `name` is libvirt's; QEMU's and Linux's spellings are kept so Tern can read
/// and write all three vocabularies.
public struct Feature: Hashable, Sendable, CustomStringConvertible {
    /// libvirt's name, e.g. `sse4.1`, `pclmuldq`, `lahf_lm`.
    public var name: String
    /// Position of this feature in its registry (its bit in a ``FeatureSet``).
    public var index: Int
    /// The bits that make up this feature (almost always exactly one).
    public var bits: [FeatureBit]
    /// Other spellings accepted on input (QEMU, Linux and common names).
    public var aliases: [String]
    /// QEMU's property name for this feature, or nil when QEMU has none.
    public var qemuName: String?
    /// The flag Linux prints in `/proc/cpuinfo`, or nil when Linux prints none.
    public var linuxName: String?
    /// False for features a VM cannot keep across a migration (libvirt's `migratable='no'`,
    /// e.g. `invtsc`).
    public var migratable: Bool

    public var description: String { name }

    /// True when every bit of this feature lives in a CPUID leaf (not an MSR).
    public var isCPUID: Bool {
        bits.allSatisfy { if case .cpuid = $0 { true } else { false } }
    }
}
