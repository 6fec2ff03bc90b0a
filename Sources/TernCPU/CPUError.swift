/// Everything that can go wrong in `TernCPU`, with the context a user needs to fix it.
public enum CPUError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The XML is not well-formed; `line` and `column` point at the problem.
    case malformedXML(source: String, line: Int, column: Int, message: String)
    /// The XML is well-formed but does not describe what was expected.
    case invalidXML(source: String, message: String)
    /// A feature name that is neither a canonical name nor an alias.
    case unknownFeature(String, suggestions: [String])
    /// A CPU model name that the CPU map does not define.
    case unknownModel(String, suggestions: [String])
    /// A vendor name that the CPU map does not define.
    case unknownVendor(String)
    /// A feature policy other than force, require, optional, disable and forbid.
    case unknownPolicy(String, feature: String)
    /// A baseline or pool of zero CPUs.
    case emptyPool
    /// CPUs of different vendors cannot share a baseline or a migration.
    case mixedVendors([String])
    /// A QEMU `-cpu` string that cannot be read.
    case malformedCPUSpec(String, reason: String)
    /// A CPU map (Tern's resources or a libvirt cpu_map directory) that cannot be read.
    case invalidCPUMap(path: String, reason: String)
    /// The host cannot give a guest the features its definition requires.
    case hostCannotOffer(model: String?, missing: [String])
    /// Pool mode on a host that cannot offer the pool's baseline.
    case hostNotInPool(missing: [String])
    /// The definition forbids a feature the guest would have to get.
    case forbiddenFeaturePresent([String])
    /// No CPU model of the map fits the given CPU data.
    case noUsableModel(String)
    /// The request mixes options that do not go together.
    case unsupported(String)

    public var description: String {
        switch self {
        case let .malformedXML(source, line, column, message):
            return "\(source):\(line):\(column): malformed XML: \(message)"
        case let .invalidXML(source, message):
            return "\(source): \(message)"
        case let .unknownFeature(name, suggestions):
            return "unknown CPU feature '\(name)'" + didYouMean(suggestions)
        case let .unknownModel(name, suggestions):
            return "unknown CPU model '\(name)'" + didYouMean(suggestions)
        case let .unknownVendor(name):
            return "unknown CPU vendor '\(name)' (known: Intel, AMD, Hygon)"
        case let .unknownPolicy(policy, feature):
            return "unknown policy '\(policy)' for feature '\(feature)' "
                + "(expected force, require, optional, disable or forbid)"
        case .emptyPool:
            return "no CPU descriptions given: a baseline needs at least one host CPU"
        case let .mixedVendors(vendors):
            return "CPU vendors differ (\(vendors.joined(separator: ", "))): no common CPU exists across vendors"
        case let .malformedCPUSpec(spec, reason):
            return "cannot read CPU '\(spec)': \(reason)"
        case let .invalidCPUMap(path, reason):
            return "invalid CPU map \(path): \(reason)"
        case let .hostCannotOffer(model, missing):
            let what = model.map { "CPU model '\($0)'" } ?? "this CPU"
            return "the host cannot offer \(what): missing features: \(missing.joined(separator: ", "))"
        case let .hostNotInPool(missing):
            return "this host cannot offer the pool's baseline CPU: missing features: \(missing.joined(separator: ", ")) "
                + "(pool mode runs a VM only on hosts that offer every feature the pool has in common; add this host to the pool)"
        case let .forbiddenFeaturePresent(names):
            return "the host CPU has features the definition forbids: \(names.joined(separator: ", "))"
        case let .noUsableModel(reason):
            return "no CPU model fits: \(reason)"
        case let .unsupported(reason):
            return reason
        }
    }
}

private func didYouMean(_ suggestions: [String]) -> String {
    guard !suggestions.isEmpty else { return "" }
    return "; did you mean " + suggestions.map { "'\($0)'" }.joined(separator: ", ") + "?"
}

/// Names from `candidates` close to `name`: same spelling ignoring case and separators,
/// a shared prefix, or an edit distance of at most two. Best first, at most `limit`.
func closeNames(to name: String, in candidates: [String], limit: Int = 3) -> [String] {
    let key = normalizedName(name)
    var scored: [(Int, String)] = []
    for candidate in candidates {
        let other = normalizedName(candidate)
        let distance = editDistance(key, other)
        let score: Int
        if distance <= 2 {
            score = distance
        } else if other.hasPrefix(key) || (key.count >= 4 && key.hasPrefix(other)) {
            score = 3
        } else {
            continue
        }
        scored.append((score, candidate))
    }
    scored.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
    var seen = Set<String>()
    return scored.map(\.1).filter { seen.insert($0).inserted }.prefix(limit).map { $0 }
}

/// Lower-case with `_` written as `-`: the form under which names are compared loosely.
func normalizedName(_ name: String) -> String {
    String(name.lowercased().map { $0 == "_" ? "-" : $0 })
}

private func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.utf8), b = Array(b.utf8)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = previous
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
