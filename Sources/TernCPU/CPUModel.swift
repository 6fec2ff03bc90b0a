/// A CPU vendor as CPUID leaf 0 names it.
///
/// Corresponds to a `<vendor name='Intel' string='GenuineIntel'/>` row of libvirt's
/// `x86_vendors.xml`.
public struct CPUVendor: Hashable, Sendable {
    /// libvirt's short name: `Intel`, `AMD`, `Hygon`.
    public var name: String
    /// The 12-character string of CPUID leaf 0, e.g. `AuthenticAMD`.
    public var string: String

    public init(name: String, string: String) {
        self.name = name
        self.string = string
    }
}

/// A named CPU model: a vendor, a signature and the features a guest of that model gets.
///
/// Corresponds to libvirt's `x86_<Model>.xml` and to QEMU's `-cpu <Model>` definitions.
public struct CPUModel: Hashable, Sendable, CustomStringConvertible {
    /// The model's name, e.g. `Haswell-noTSX`.
    public var name: String
    /// Other names for the same definition (QEMU's versioned names such as `Haswell-v2`).
    public var aliases: [String]
    /// The vendor's short name, or nil for generic models any vendor can run (`qemu64`).
    public var vendor: String?
    /// Processor signatures this model stands for (libvirt prefers a model whose signature
    /// matches the host when several fit equally well).
    public var signatures: [CPUSignature]
    /// The features the model enables.
    public var features: FeatureSet
    /// Whether this model may be picked to describe a host CPU (libvirt's `<decode host='on'/>`).
    public var decodeHost: Bool
    /// Whether this model may be picked to describe a guest CPU, e.g. a baseline (libvirt's
    /// `<decode guest='on'/>`).
    public var decodeGuest: Bool
    /// Features the model once had and no longer enables (libvirt's `removed='yes'`): a guest
    /// definition of this model lists them as disabled.
    public var removedFeatures: FeatureSet
    /// Where the definition comes from.
    public var source: String

    public init(
        name: String, aliases: [String] = [], vendor: String?, signatures: [CPUSignature], features: FeatureSet,
        decodeHost: Bool = true, decodeGuest: Bool = true, removedFeatures: FeatureSet = FeatureSet(), source: String = ""
    ) {
        self.name = name
        self.aliases = aliases
        self.vendor = vendor
        self.signatures = signatures
        self.features = features
        self.decodeHost = decodeHost
        self.decodeGuest = decodeGuest
        self.removedFeatures = removedFeatures
        self.source = source
    }

    public var description: String { name }

    /// True when the model stands for processors of this family and model number.
    public func hasSignature(_ signature: CPUSignature?) -> Bool {
        guard let signature else { return false }
        return signatures.contains { $0.family == signature.family && $0.model == signature.model }
    }
}
