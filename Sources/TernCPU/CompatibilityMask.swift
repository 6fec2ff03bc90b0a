/// Classic processor compatibility mode: the features withheld from a guest so it can move to
/// any host of the same vendor.
///
/// The lists are the ones MISSION.md gives (Hyper-V's processor compatibility mode). Hygon
/// processors are AMD-derived and get the AMD mask. Features that cannot work without a
/// withheld one (AVX2 without AVX, XSAVEC without XSAVE, every AVX-512 subset …) are withheld
/// too: otherwise the guest would see a CPU no real processor is. The same goes for SSE4.2
/// without SSSE3 and SSE4.1 — on AMD hosts the mask keeps SSE4.2, but code built for SSE4.2
/// uses SSSE3 instructions (glibc's SSE4.2 string functions run PSHUFB), so a guest shown
/// SSE4.2 alone crashes wherever CPUID is enforced (its init died of SIGILL under QEMU's TCG).
/// Nothing else is added to the lists.
public struct CompatibilityMask: Sendable {
    /// The vendor the mask is for.
    public var vendor: String
    /// The canonical names of the withheld features (before dependents are added).
    public var features: [String]

    /// The CLFLUSH line size a guest sees in compatibility mode, in bytes.
    public static let clflushLineSize = 8

    /// The AMD mask: SSSE3, SSE4.1, SSE4A, SSE5 (XOP and FMA4), POPCNT, LZCNT (ABM),
    /// misaligned SSE, 3DNow! and extended 3DNow!.
    public static let amd = CompatibilityMask(
        vendor: "AMD",
        features: ["ssse3", "sse4.1", "sse4a", "xop", "fma4", "popcnt", "abm", "misalignsse", "3dnow", "3dnowext"])

    /// The Intel mask: SSSE3, SSE4.1, SSE4.2, POPCNT, misaligned SSE, XSAVE and AVX.
    public static let intel = CompatibilityMask(
        vendor: "Intel", features: ["ssse3", "sse4.1", "sse4.2", "popcnt", "misalignsse", "xsave", "avx"])

    /// The mask for a vendor's short name, or nil for vendors without one.
    public static func forVendor(_ vendor: String) -> CompatibilityMask? {
        switch vendor {
        case "Intel": intel
        case "AMD", "Hygon": amd
        default: nil
        }
    }

    /// Features that only work together with another one: (feature, what it needs).
    /// From the Intel SDM / AMD APM enumeration rules (state components managed by XSAVE, AVX
    /// encodings, AVX-512 foundation), and the SSSE3 ⊂ SSE4.1 ⊂ SSE4.2 chain every processor
    /// and compiler follows.
    static let dependencies: [(String, String)] = [
        ("sse4.1", "ssse3"), ("sse4.2", "ssse3"), ("sse4.2", "sse4.1"),
        ("xsaveopt", "xsave"), ("xsavec", "xsave"), ("xsaves", "xsave"), ("xgetbv1", "xsave"), ("avx", "xsave"),
        ("mpx", "xsave"), ("pku", "xsave"), ("amx-tile", "xsave"), ("amx-int8", "amx-tile"), ("amx-bf16", "amx-tile"),
        ("avx2", "avx"), ("fma", "avx"), ("f16c", "avx"), ("vaes", "avx"), ("vpclmulqdq", "avx"), ("avx-vnni", "avx"),
        ("xop", "avx"), ("fma4", "avx"), ("avx512f", "avx2"), ("avx512dq", "avx512f"), ("avx512ifma", "avx512f"),
        ("avx512cd", "avx512f"), ("avx512bw", "avx512f"), ("avx512vl", "avx512f"), ("avx512vbmi", "avx512f"),
        ("avx512vbmi2", "avx512f"), ("avx512vnni", "avx512f"), ("avx512bitalg", "avx512f"),
        ("avx512-vpopcntdq", "avx512f"), ("avx512-bf16", "avx512f"), ("avx512-fp16", "avx512f"),
        ("avx512-4vnniw", "avx512f"), ("avx512-4fmaps", "avx512f"), ("avx512-vp2intersect", "avx512f"),
    ]

    /// The withheld features with every feature that depends on one of them, as a set of
    /// `registry`. Names the registry lacks (a libvirt map without `xop`, say) are skipped.
    public func withheld(in registry: FeatureRegistry) throws(CPUError) -> FeatureSet {
        var names = Set(features)
        var changed = true
        while changed {
            changed = false
            for (feature, needs) in Self.dependencies where names.contains(needs) && !names.contains(feature) {
                names.insert(feature)
                changed = true
            }
        }
        var set = FeatureSet()
        for name in names { if let feature = registry.feature(named: name) { set.insert(feature) } }
        return set
    }
}
