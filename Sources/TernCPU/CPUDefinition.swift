/// A CPU as libvirt's `<cpu>` element states it: either a *host* CPU description (what a
/// processor is: arch, model, vendor, signature, extra features) or a *guest* CPU definition
/// (what a VM should get: mode, match, model with fallback, features with policies).
///
/// libvirt tells the two apart by the `<arch>` element, which only host descriptions carry;
/// Tern does the same. Features of a guest definition without a policy are `require`.
public struct CPUDefinition: Equatable, Sendable {
    /// libvirt's `type`: a host CPU description or a guest CPU definition.
    public enum Kind: Sendable { case host, guest }

    /// libvirt's `<cpu mode=…>`.
    public enum Mode: String, Sendable, CaseIterable {
        case custom
        case hostModel = "host-model"
        case hostPassthrough = "host-passthrough"
        case maximum
    }

    /// libvirt's `<cpu match=…>`: how strictly the host must agree with the definition.
    public enum Match: String, Sendable, CaseIterable { case minimum, exact, strict }

    /// libvirt's `<cpu check=…>`.
    public enum Check: String, Sendable, CaseIterable { case none, partial, full }

    /// libvirt's `<model fallback=…>`.
    public enum Fallback: String, Sendable, CaseIterable { case allow, forbid }

    /// libvirt's feature policies.
    public enum Policy: String, Sendable, CaseIterable {
        /// The guest gets the feature whether or not the host has it.
        case force
        /// The guest gets the feature; the host must have it.
        case require
        /// The guest gets the feature if the host has it.
        case optional
        /// The guest does not get the feature.
        case disable
        /// The guest does not get the feature, and the host must not have it.
        case forbid
    }

    /// One `<feature policy=… name=…/>` row.
    public struct FeatureRequest: Equatable, Sendable {
        public var name: String
        /// nil in host descriptions, which carry no policies.
        public var policy: Policy?

        public init(name: String, policy: Policy?) {
            self.name = name
            self.policy = policy
        }
    }

    /// libvirt's `<topology sockets dies cores threads/>`.
    public struct Topology: Equatable, Sendable {
        public var sockets: Int
        public var dies: Int
        public var cores: Int
        public var threads: Int

        public init(sockets: Int = 1, dies: Int = 1, cores: Int = 1, threads: Int = 1) {
            self.sockets = sockets
            self.dies = dies
            self.cores = cores
            self.threads = threads
        }

        /// sockets × dies × cores × threads.
        public var vcpus: Int { sockets * dies * cores * threads }
    }

    public var kind: Kind
    public var mode: Mode
    public var match: Match?
    public var check: Check?
    /// `migratable='on|off'` of host-passthrough and maximum modes.
    public var migratable: Bool?
    public var arch: String?
    public var model: String?
    public var fallback: Fallback?
    /// `<model vendor_id=…>`: the vendor string a guest is shown instead of the real one.
    public var vendorID: String?
    public var vendor: String?
    public var signature: CPUSignature?
    public var microcode: String?
    public var topology: Topology?
    public var features: [FeatureRequest]

    public init(
        kind: Kind, mode: Mode = .custom, match: Match? = nil, check: Check? = nil, migratable: Bool? = nil,
        arch: String? = nil, model: String? = nil, fallback: Fallback? = nil, vendorID: String? = nil,
        vendor: String? = nil, signature: CPUSignature? = nil, microcode: String? = nil, topology: Topology? = nil,
        features: [FeatureRequest] = []
    ) {
        self.kind = kind
        self.mode = mode
        self.match = match
        self.check = check
        self.migratable = migratable
        self.arch = arch
        self.model = model
        self.fallback = fallback
        self.vendorID = vendorID
        self.vendor = vendor
        self.signature = signature
        self.microcode = microcode
        self.topology = topology
        self.features = features
    }

    /// The names of features with the given policy (for host descriptions, pass nil).
    public func features(withPolicy policy: Policy?) -> [String] {
        features.filter { $0.policy == policy }.map(\.name)
    }
}
