import Foundation
import Synchronization

/// Everything Tern knows about x86 CPUs: the feature registry, the vendors and the CPU models.
///
/// Tern ships its own map (``builtin()``: `Resources/features.json` and
/// `Resources/models.json`, see `scripts/generate-cpu-data.py` for their provenance) and can
/// load a libvirt `cpu_map` directory (``libvirt(directory:)``), so that a libvirt user's model
/// names mean exactly what they mean to libvirt.
public struct CPUMap: Sendable {
    public let registry: FeatureRegistry
    public let vendors: [CPUVendor]
    /// Models in map order (libvirt's order matters: it is the order candidates are tried in).
    public let models: [CPUModel]
    /// Where the map came from ("builtin" or a directory).
    public let source: String
    private let modelIndex: [String: Int]

    public init(registry: FeatureRegistry, vendors: [CPUVendor], models: [CPUModel], source: String) {
        self.registry = registry
        self.vendors = vendors
        self.models = models
        self.source = source
        var index: [String: Int] = [:]
        for (i, model) in models.enumerated() {
            for name in [model.name] + model.aliases where index[name] == nil { index[name] = i }
        }
        for (i, model) in models.enumerated() {
            for name in [model.name] + model.aliases {
                let lower = name.lowercased()
                if index[lower] == nil { index[lower] = i }
            }
        }
        modelIndex = index
    }

    /// The model called `name` (or one of its aliases; case is ignored when nothing matches
    /// exactly), or nil.
    public func model(named name: String) -> CPUModel? {
        (modelIndex[name] ?? modelIndex[name.lowercased()]).map { models[$0] }
    }

    /// The model called `name`, or ``CPUError/unknownModel(_:suggestions:)`` with close names.
    public func lookupModel(_ name: String) throws(CPUError) -> CPUModel {
        if let model = model(named: name) { return model }
        throw .unknownModel(name, suggestions: closeNames(to: name, in: models.flatMap { [$0.name] + $0.aliases }))
    }

    /// The vendor with this short name (`Intel`) or CPUID string (`GenuineIntel`).
    public func vendor(named name: String) -> CPUVendor? {
        vendors.first { $0.name.lowercased() == name.lowercased() || $0.string == name }
    }

    public func lookupVendor(_ name: String) throws(CPUError) -> CPUVendor {
        if let vendor = vendor(named: name) { return vendor }
        throw .unknownVendor(name)
    }

    // MARK: - Tern's own map

    private static let builtinResult: Result<CPUMap, CPUError> = Result { () throws(CPUError) -> CPUMap in
        guard let features = Bundle.module.url(forResource: "features", withExtension: "json"),
            let models = Bundle.module.url(forResource: "models", withExtension: "json")
        else {
            throw .invalidCPUMap(path: Bundle.module.bundlePath, reason: "features.json or models.json is missing")
        }
        return try load(featuresJSON: features, modelsJSON: models)
    }

    /// Tern's own CPU map, loaded once.
    public static func builtin() throws(CPUError) -> CPUMap { try builtinResult.get() }

    /// The vendors Tern knows, with their CPUID strings.
    public static let knownVendors = [
        CPUVendor(name: "Intel", string: "GenuineIntel"),
        CPUVendor(name: "AMD", string: "AuthenticAMD"),
        CPUVendor(name: "Hygon", string: "HygonGenuine"),
        CPUVendor(name: "Zhaoxin", string: "  Shanghai  "),
    ]

    /// Loads a map in Tern's own JSON format.
    ///
    /// Every `tern` command loads the map, so the two files are decoded side by side: the models
    /// file is parsed on a second thread while the features are decoded, and only then are the
    /// models' feature names resolved.
    public static func load(featuresJSON: URL, modelsJSON: URL) throws(CPUError) -> CPUMap {
        let parsedModels = Mutex<Result<ModelFile, CPUError>?>(nil)
        let decodedFeatures = Mutex<Result<[Feature], CPUError>?>(nil)
        DispatchQueue.concurrentPerform(iterations: 2) { index in
            if index == 0 {
                let result = Result { () throws(CPUError) in try readJSON(ModelFile.self, modelsJSON) }
                parsedModels.withLock { $0 = result }
            } else {
                let result = Result { () throws(CPUError) in try decodeFeatures(featuresJSON) }
                decodedFeatures.withLock { $0 = result }
            }
        }
        guard let features = decodedFeatures.withLock({ $0 }), let modelFile = parsedModels.withLock({ $0 }) else {
            throw .invalidCPUMap(path: modelsJSON.path, reason: "the map was not decoded")
        }
        let registry = try FeatureRegistry(features: try features.get())
        let models = try resolveModels(try modelFile.get(), path: modelsJSON.path, registry: registry)
        return CPUMap(registry: registry, vendors: knownVendors, models: models, source: "builtin")
    }

    private struct FeatureFile: Decodable {
        struct Entry: Decodable {
            var name: String
            var cpuid: String?
            var subleaf: UInt32?
            var msr: String?
            var register: CPUIDRegister?
            var bit: Int?
            var bits: [Entry]?
            var aliases: [String]?
            var qemu: String?
            var linux: String?
            var migratable: Bool?
        }
        var features: [Entry]
    }

    private struct ModelFile: Decodable, Sendable {
        struct Entry: Decodable, Sendable {
            var name: String
            var aliases: [String]?
            var vendor: String?
            var family: Int
            var model: Int
            var stepping: Int?
            var source: String?
            var features: [String]
        }
        var models: [Entry]
    }

    private static func readJSON<T: Decodable>(_ type: T.Type, _ url: URL) throws(CPUError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(contentsOf: url))
        } catch {
            throw .invalidCPUMap(path: url.path, reason: "\(error)")
        }
    }

    private static func decodeFeatures(_ url: URL) throws(CPUError) -> [Feature] {
        let file = try readJSON(FeatureFile.self, url)
        func bit(_ entry: FeatureFile.Entry, feature: String) throws(CPUError) -> FeatureBit {
            guard let register = entry.register, let bit = entry.bit, (0..<32).contains(bit) else {
                throw .invalidCPUMap(path: url.path, reason: "feature '\(feature)' has no valid register/bit")
            }
            if let leaf = entry.cpuid.flatMap(parseHex) {
                return .cpuid(leaf: CPUIDLeaf(UInt32(leaf), subleaf: entry.subleaf ?? 0), register: register, bit: bit)
            }
            if let index = entry.msr.flatMap(parseHex) {
                switch register {
                case .eax: return .msr(index: UInt32(index), bit: bit)
                case .edx: return .msr(index: UInt32(index), bit: bit + 32)
                default: break
                }
            }
            throw .invalidCPUMap(path: url.path, reason: "feature '\(feature)' has neither a CPUID leaf nor an MSR")
        }
        var features: [Feature] = []
        for entry in file.features {
            var bits: [FeatureBit] = []
            for part in entry.bits ?? [entry] { bits.append(try bit(part, feature: entry.name)) }
            features.append(
                Feature(
                    name: entry.name, index: features.count, bits: bits, aliases: entry.aliases ?? [],
                    qemuName: entry.qemu ?? entry.name, linuxName: entry.linux ?? entry.name,
                    migratable: entry.migratable ?? true))
        }
        return features
    }

    private static func resolveModels(_ file: ModelFile, path: String, registry: FeatureRegistry) throws(CPUError) -> [CPUModel] {
        var models: [CPUModel] = []
        for entry in file.models {
            var set = FeatureSet()
            for name in entry.features {
                guard let feature = registry.feature(named: name) else {
                    throw .invalidCPUMap(path: path, reason: "model '\(entry.name)' names unknown feature '\(name)'")
                }
                set.insert(feature)
            }
            models.append(
                CPUModel(
                    name: entry.name, aliases: entry.aliases ?? [], vendor: entry.vendor,
                    signatures: [CPUSignature(family: entry.family, model: entry.model, stepping: entry.stepping ?? 0)],
                    features: set, source: entry.source ?? "builtin"))
        }
        return models
    }
}
