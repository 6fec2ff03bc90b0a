import Foundation
import Synchronization
import TernCPU
import TernTestSupport
import Testing

/// Boots the Debian kernel with the busybox initramfs through `tern run` and checks, from
/// inside the guest, that it got exactly the CPU Tern promised.
@Suite(.serialized) struct GuestBootTests {
    let map: CPUMap
    init() throws {
        try TestGuest.ensureBuilt()
        map = try CPUMap.builtin()
    }

    /// The features `tern run --show-cpu` promised.
    func promised(_ run: ProgramRun) -> Set<String> {
        guard let line = run.err.split(separator: "\n").first(where: { $0.hasPrefix("tern: guest CPU: ") }),
            let range = line.range(of: "features=")
        else { return [] }
        return Set(line[range.upperBound...].split(separator: " ").map(String.init))
    }

    /// The guest's /proc/cpuinfo flags that name a CPU feature, as canonical names (Linux's own
    /// synthetic flags such as `rep_good` or `pti` are left out).
    func guestFeatures(_ run: ProgramRun) -> Set<String> {
        let flags = run.guestValue("flags")?.split(separator: " ").map(String.init) ?? []
        return Set(flags.compactMap { map.registry.feature(named: $0)?.name })
    }

    func boot(_ extra: [String], mode: String = "flags", cpus: Int = 1) throws -> ProgramRun {
        try tern(arguments: TestGuest.runArguments(mode: mode, cpus: cpus) + ["--show-cpu"] + extra, timeout: 180)
    }

    /// What Linux shows of this host's offer: the reference for "visible" features.
    static let reference = Mutex<Set<String>?>(nil)

    func visibleFeatures() throws -> Set<String> {
        if let cached = Self.reference.withLock({ $0 }) { return cached }
        let run = try boot([])
        let visible = guestFeatures(run)
        Self.reference.withLock { $0 = visible }
        return visible
    }

    /// Checks that the guest shows exactly the promised features Linux can show.
    func expectExactCPU(_ run: ProgramRun, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(run.status == 0, "\(run.err)", sourceLocation: sourceLocation)
        #expect(run.err.contains("powered off"), sourceLocation: sourceLocation)
        var promised = promised(run).union(["hypervisor"])
        // OS-controlled bits follow the feature they mirror (the guest kernel turns them on).
        for (bit, base) in CPUMap.osControlledFeatures where promised.contains(base) { promised.insert(bit) }
        // Linux shows PREFETCHW on every 64-bit AMD processor, whatever CPUID says: its AMD
        // setup code infers it from long mode (CPUID itself was checked over QMP at start).
        // Likewise ARAT (an APIC timer that keeps running) on AMD families after 11h.
        if run.guestValue("vendor") == "AuthenticAMD", promised.contains("lm") { promised.formUnion(["3dnowprefetch", "arat"]) }
        let guest = guestFeatures(run)
        #expect(!promised.isEmpty, sourceLocation: sourceLocation)
        #expect(guest.subtracting(promised).isEmpty, "guest has unpromised \(guest.subtracting(promised))", sourceLocation: sourceLocation)
        let visible = try visibleFeatures()
        let missing = promised.intersection(visible).subtracting(guest)
            .subtracting(CPUMap.osControlledFeatures.keys)
        #expect(missing.isEmpty, "guest lacks promised \(missing)", sourceLocation: sourceLocation)
    }

    @Test func bootsToUserspaceWithTwoVCPUsAndPowersOff() throws {
        let run = try boot([], cpus: 2)
        #expect(run.guestLines.contains("ready"))
        #expect(run.guestValue("cpus") == "2")
        #expect(run.guestLines.contains("done"))
        #expect(run.status == 0)
        #expect(run.err.contains("tern: VM 'tern-run' powered off"))
    }

    @Test func hostPassthroughGivesTheHostsOffer() throws {
        let run = try boot([])
        try expectExactCPU(run)
        #expect(guestFeatures(run).contains("sse2"))
    }

    @Test func namedModelWithFeaturesTakenAway() throws {
        let run = try boot(["--cpu", "Haswell-noTSX,-avx2,-vme,-pcid,-x2apic,-tsc-deadline,-invpcid"])
        try expectExactCPU(run)
        let guest = guestFeatures(run)
        #expect(!guest.contains("avx2"))
        for feature in ["avx", "fma", "bmi2", "movbe", "f16c"] { #expect(guest.contains(feature), "\(feature)") }
        #expect(run.guestValue("vendor") == "GenuineIntel")
        #expect(run.guestValue("model")?.contains("Haswell") == true)
    }

    @Test func classicCompatibilityModeHidesTheMask() throws {
        let run = try boot(["--compat"])
        try expectExactCPU(run)
        let guest = guestFeatures(run)
        // The mask of this host's vendor (MISSION.md gives one for Intel and one for AMD).
        let vendor = try #require(map.vendor(named: run.guestValue("vendor") ?? ""), "the guest printed no known vendor")
        let mask = try #require(CompatibilityMask.forVendor(vendor.name))
        let withheld = try map.registry.names(of: mask.withheld(in: map.registry))
        #expect(withheld.contains("ssse3") && withheld.contains("popcnt") && withheld.contains("sse4.2"))
        for masked in withheld {
            #expect(!guest.contains(masked), "\(masked) visible in compatibility mode")
        }
        #expect(guest.contains("sse2"))
    }

    @Test func poolModeGivesThePoolsCommonFeatures() throws {
        let here = FileManager.default.temporaryDirectory.appendingPathComponent("tern-here-\(getpid()).xml")
        defer { try? FileManager.default.removeItem(at: here) }
        let capabilities = try tern("capabilities").out
        try capabilities.write(to: here, atomically: true, encoding: .utf8)
        // An older processor of this host's vendor (a pool never mixes vendors), and what it
        // lacks: Sandy Bridge on Intel hosts (AVX, nothing newer); Zen 1 (EPYC 7601) on AMD hosts
        // (AVX2, but none of what Zen 2 and 3 added).
        let amd = capabilities.contains("<vendor>AMD</vendor>")
        let (older, has, lacks) =
            amd
            ? ("EPYC-7601-32-Core", ["avx", "avx2"], ["clwb", "umip", "rdpid", "vaes", "vpclmulqdq"])
            : ("Core-i7-2600", ["avx"], ["avx2", "bmi1", "bmi2", "fma", "movbe"])
        let run = try boot(["--pool", here.path, "--pool", "\(cpuidDumps)/\(older).xml"])
        try expectExactCPU(run)
        let guest = guestFeatures(run)
        for feature in has { #expect(guest.contains(feature), "\(feature)") }
        for newer in lacks { #expect(!guest.contains(newer), "\(newer)") }
        // The pool really took something away that this host offers.
        #expect(!Set(lacks).isDisjoint(with: try visibleFeatures()), "the host offers nothing the older CPU lacks")
    }

    @Test func aCPUTheHostCannotOfferIsRefusedBeforeQEMUStarts() throws {
        let run = try boot(["--cpu", "Haswell-noTSX"])
        #expect(run.status != 0)
        #expect(run.err.contains("missing features"))
        for feature in ["pcid", "x2apic", "tsc-deadline", "invpcid"] { #expect(run.err.contains(feature), "\(feature)") }
        #expect(!run.out.contains("TERN-GUEST"))
    }

    @Test func aPanickingGuestIsReportedAsCrashed() throws {
        let run = try boot([], mode: "panic")
        #expect(run.status == 1)
        #expect(run.err.contains("crashed: the guest kernel panicked"))
        #expect(run.out.contains("Kernel panic"))
    }

    @Test(arguments: [
        (["--kernel", "/nonexistent/vmlinuz"], "kernel not found"),
        (["--memory", "16M"], "too small"),
        (["--cpu", "Haswel"], "unknown CPU model 'Haswel'"),
        (["--cpu", "Haswell-noTSX,-avx3"], "unknown CPU feature 'avx3'"),
        (["--cpus", "0"], "0 vCPUs"),
    ])
    func badInputIsRefusedWithAClearError(extra: [String], message: String) throws {
        let run = try tern(arguments: TestGuest.runArguments(mode: "flags") + extra)
        #expect(run.status != 0)
        #expect(run.err.contains(message), "\(run.err)")
    }

    @Test func aGarbageKernelSurfacesQEMUsError() throws {
        let garbage = FileManager.default.temporaryDirectory.appendingPathComponent("tern-garbage-\(getpid())")
        defer { try? FileManager.default.removeItem(at: garbage) }
        try Data(repeating: 0x41, count: 4096).write(to: garbage)
        let run = try tern(arguments: TestGuest.runArguments(mode: "flags") + ["--kernel", garbage.path], timeout: 60)
        #expect(run.status != 0)
        #expect(run.err.contains("failed to start"), "\(run.err)")
    }
}
