/// A CPU reduced to what the compatibility rules look at: its vendor, its signature and the
/// exact set of features it offers.
///
/// A host description (model + features), a raw CPUID table and a guest's computed CPU all
/// resolve to this; compare, baseline and the migration check work on it.
public struct ResolvedCPU: Equatable, Sendable {
    /// The vendor's short name (`Intel`, `AMD`, `Hygon`), or nil when unknown.
    public var vendor: String?
    public var signature: CPUSignature?
    public var features: FeatureSet

    public init(vendor: String?, signature: CPUSignature? = nil, features: FeatureSet) {
        self.vendor = vendor
        self.signature = signature
        self.features = features
    }
}

extension CPUMap {
    /// The CPU a raw CPUID table describes.
    ///
    /// Intel processors whose TSX was disabled by a microcode update (family 6, model 63 before
    /// stepping 4, and models 60, 69 and 70) still report HLE and RTM; like libvirt, Tern leaves
    /// those two features out for them.
    public func resolve(table: CPUIDTable) -> ResolvedCPU {
        let vendor = table.vendorString.flatMap { string in vendors.first { $0.string == string }?.name }
        var features = registry.features(of: table)
        if vendor == "Intel", let signature = table.signature, signature.family == 6,
            (signature.model == 63 && signature.stepping < 4) || [60, 69, 70].contains(signature.model)
        {
            for name in ["hle", "rtm"] { if let feature = registry.feature(named: name) { features.remove(feature) } }
        }
        return ResolvedCPU(vendor: vendor, signature: table.signature, features: features)
    }

    /// The CPU a host description states: its model's features plus its listed features.
    ///
    /// For a guest definition, features with policy force, require and optional are added and
    /// those with disable and forbid removed (what the guest would get on a host that has
    /// everything).
    ///
    /// - Throws: ``CPUError/unknownModel(_:suggestions:)``, ``CPUError/unknownFeature(_:suggestions:)``,
    ///   ``CPUError/unknownVendor(_:)``.
    public func resolve(_ cpu: CPUDefinition) throws(CPUError) -> ResolvedCPU {
        var features = FeatureSet()
        var vendor: String? = nil
        var signature = cpu.signature
        if let name = cpu.model {
            let model = try lookupModel(name)
            features = model.features
            vendor = model.vendor
            if signature == nil, model.signatures.count == 1 { signature = model.signatures[0] }
        }
        if let name = cpu.vendor { vendor = try lookupVendor(name).name }
        for request in cpu.features {
            let feature = try registry.lookup(request.name)
            switch request.policy {
            case nil, .force, .require, .optional: features.insert(feature)
            case .disable, .forbid: features.remove(feature)
            }
        }
        return ResolvedCPU(vendor: vendor, signature: signature, features: features)
    }

    /// Describes `cpu` the way libvirt does: the CPU model that best matches it plus the
    /// features it has beyond that model (and, for a guest definition, those the model has and
    /// it lacks, with policy `disable`).
    ///
    /// Candidates are tried from the end of the map to the start (newest first), skipping models
    /// of another vendor and models not meant to describe this kind of CPU. For a host CPU a model
    /// with any feature the CPU lacks is rejected. A model whose signature matches the CPU's
    /// family and model beats one whose does not. Otherwise the model needing the fewest listed
    /// features wins; for a guest definition each disabled feature also costs a growing penalty
    /// (libvirt 9.0 counts half of them, rounded up: Tern reproduces that count so its answers
    /// agree with libvirt's). Ties keep the earlier pick. When `preferred` names one model, that
    /// model wins as soon as it is reached; with several it only breaks ties.
    ///
    /// - Parameters:
    ///   - kind: `.host` lists extra features without policy (capabilities XML); `.guest` lists
    ///     them with policy `require` (cpu-baseline output).
    ///   - preferred: model names to prefer (the input models of a baseline).
    ///   - migratable: drop features that cannot be migrated (`invtsc` …) from the result.
    /// - Throws: ``CPUError/noUsableModel(_:)`` when no candidate fits.
    public func describe(
        _ cpu: ResolvedCPU, kind: CPUDefinition.Kind, preferred: [String] = [], migratable: Bool = false
    ) throws(CPUError) -> CPUDefinition {
        struct Candidate {
            var model: CPUModel
            var require: FeatureSet
            var disable: [Int]
            var score: Int
            var penalty: Int
        }
        let data = cpu.features
        var best: Candidate? = nil
        for model in models.reversed() {
            if let vendor = cpu.vendor, let modelVendor = model.vendor, vendor != modelVendor { continue }
            if kind == .host ? !model.decodeHost : !model.decodeGuest { continue }
            let require = data.subtracting(model.features)
            let missing = model.features.subtracting(data)
            var disable = missing.indices
            if kind == .guest {
                disable += model.removedFeatures.subtracting(require).subtracting(missing).indices
            } else if !missing.isEmpty {
                continue
            }
            var score = require.count
            var penalty = 0
            if kind == .guest {
                let counted = (disable.count + 1) / 2
                penalty = 2 * counted + counted * (counted - 1) / 2
                score = require.count + disable.count - counted + penalty
            }
            let candidate = Candidate(model: model, require: require, disable: disable, score: score, penalty: penalty)
            if preferred.count == 1 && preferred[0] == model.name {
                best = candidate
                break
            }
            guard let current = best else {
                best = candidate
                continue
            }
            if cpu.signature != nil {
                let currentMatches = current.model.hasSignature(cpu.signature)
                let candidateMatches = model.hasSignature(cpu.signature)
                if currentMatches && !candidateMatches { continue }
                if candidateMatches && !currentMatches {
                    best = candidate
                    continue
                }
            }
            if score < current.score || (score == current.score && penalty < current.penalty) {
                best = candidate
            } else if preferred.contains(model.name) && penalty < current.penalty {
                best = candidate
            }
        }
        guard let best else {
            throw .noUsableModel("no CPU model of the map (\(source)) fits the given CPU data")
        }
        var definition = CPUDefinition(kind: kind)
        if kind == .guest { definition.match = .exact }
        definition.model = best.model.name
        definition.vendor = cpu.vendor
        let policy: CPUDefinition.Policy? = kind == .guest ? .require : nil
        definition.features = best.require.indices.map { .init(name: registry.features[$0].name, policy: policy) }
            + best.disable.map { .init(name: registry.features[$0].name, policy: .disable) }
        if migratable {
            definition.features.removeAll { registry.feature(named: $0.name)?.migratable == false }
        }
        return definition
    }

    /// Writes out every feature of the definition's model as an explicit feature (libvirt's
    /// `--features` / `VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES`), keeping the model name: the
    /// model's features become `require`, the listed features keep their policy, the model's
    /// removed features are added as `disable`, and the list is sorted by name.
    public func expandFeatures(_ definition: CPUDefinition) throws(CPUError) -> CPUDefinition {
        var result = definition
        guard let name = definition.model else { return result }
        let model = try lookupModel(name)
        var policies: [String: CPUDefinition.Policy?] = [:]
        let policy: CPUDefinition.Policy? = definition.kind == .guest ? .require : nil
        for feature in registry.features(in: model.features) { policies[feature.name] = policy }
        for request in definition.features { policies[request.name] = request.policy }
        for feature in registry.features(in: model.removedFeatures) where policies[feature.name] == nil {
            policies[feature.name] = .disable
        }
        result.features = policies.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }.map {
            .init(name: $0, policy: policies[$0] ?? nil)
        }
        return result
    }
}
