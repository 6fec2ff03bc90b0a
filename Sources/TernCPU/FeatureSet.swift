/// A set of features of one ``FeatureRegistry``, stored as a bitmap of feature indices.
///
/// Union, intersection and subtraction are word operations, which is what makes a baseline of
/// many thousands of hosts cheap.
public struct FeatureSet: Hashable, Sendable {
    @usableFromInline var words: [UInt64]

    /// An empty set.
    public init() { words = [] }

    /// A set of the given feature indices.
    public init<S: Sequence>(indices: S) where S.Element == Int {
        words = []
        for index in indices { insert(index) }
    }

    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    public func contains(_ index: Int) -> Bool {
        let word = index >> 6
        return word < words.count && words[word] & (1 << UInt64(index & 63)) != 0
    }

    public func contains(_ feature: Feature) -> Bool { contains(feature.index) }

    public mutating func insert(_ index: Int) {
        let word = index >> 6
        if word >= words.count { words.append(contentsOf: repeatElement(0, count: word - words.count + 1)) }
        words[word] |= 1 << UInt64(index & 63)
    }

    public mutating func insert(_ feature: Feature) { insert(feature.index) }

    public mutating func remove(_ index: Int) {
        let word = index >> 6
        if word < words.count { words[word] &= ~(1 << UInt64(index & 63)) }
    }

    public mutating func remove(_ feature: Feature) { remove(feature.index) }

    @inlinable
    public mutating func formIntersection(_ other: FeatureSet) {
        if other.words.count < words.count { words.removeLast(words.count - other.words.count) }
        for i in words.indices { words[i] &= other.words[i] }
    }

    public mutating func formUnion(_ other: FeatureSet) {
        if other.words.count > words.count {
            words.append(contentsOf: repeatElement(0, count: other.words.count - words.count))
        }
        for i in other.words.indices { words[i] |= other.words[i] }
    }

    public mutating func subtract(_ other: FeatureSet) {
        for i in words.indices where i < other.words.count { words[i] &= ~other.words[i] }
    }

    public func intersection(_ other: FeatureSet) -> FeatureSet {
        var copy = self
        copy.formIntersection(other)
        return copy
    }

    public func union(_ other: FeatureSet) -> FeatureSet {
        var copy = self
        copy.formUnion(other)
        return copy
    }

    public func subtracting(_ other: FeatureSet) -> FeatureSet {
        var copy = self
        copy.subtract(other)
        return copy
    }

    public func isSubset(of other: FeatureSet) -> Bool {
        for i in words.indices where words[i] != 0 {
            if i >= other.words.count || words[i] & ~other.words[i] != 0 { return false }
        }
        return true
    }

    public func isSuperset(of other: FeatureSet) -> Bool { other.isSubset(of: self) }

    /// The feature indices in the set, ascending.
    public var indices: [Int] {
        var result: [Int] = []
        for (w, word) in words.enumerated() where word != 0 {
            var bits = word
            while bits != 0 {
                let bit = bits.trailingZeroBitCount
                result.append(w << 6 | bit)
                bits &= bits - 1
            }
        }
        return result
    }

    public static func == (lhs: FeatureSet, rhs: FeatureSet) -> Bool {
        let n = max(lhs.words.count, rhs.words.count)
        for i in 0..<n where (i < lhs.words.count ? lhs.words[i] : 0) != (i < rhs.words.count ? rhs.words[i] : 0) {
            return false
        }
        return true
    }

    public func hash(into hasher: inout Hasher) {
        var end = words.count
        while end > 0 && words[end - 1] == 0 { end -= 1 }
        for i in 0..<end { hasher.combine(words[i]) }
    }
}
