import CTernHost
import Foundation
import TernCPU

/// This machine's processor, read with the CPUID instruction, or a recorded processor that
/// stands in for it.
public enum HostCPU {
    /// The basic and extended leaves Tern reads, with the sub-leaves that carry features.
    static let subleaves: [UInt32: [UInt32]] = [0x7: [0, 1], 0xd: [0, 1], 0x14: [0, 1]]

    /// Reads this processor's CPUID leaves (every basic leaf up to leaf 0's maximum, every
    /// extended leaf up to 0x80000000's maximum, and the sub-leaves that carry features).
    ///
    /// The feature MSRs (IA32_ARCH_CAPABILITIES) are not read: that needs the msr driver and root;
    /// their features are then simply absent.
    public static func readCPUID() -> CPUIDTable {
        var table = CPUIDTable()
        func read(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> CPUIDRegisters {
            var a: UInt32 = 0, b: UInt32 = 0, c: UInt32 = 0, d: UInt32 = 0
            _ = tern_cpuid(leaf, subleaf, &a, &b, &c, &d)
            let regs = CPUIDRegisters(eax: a, ebx: b, ecx: c, edx: d)
            table[CPUIDLeaf(leaf, subleaf: subleaf)] = regs
            return regs
        }
        let maxBasic = min(read(0).eax, 0x20)
        for leaf in UInt32(1)...max(maxBasic, 1) {
            for subleaf in subleaves[leaf] ?? [0] { _ = read(leaf, subleaf) }
        }
        let maxExtended = min(read(0x8000_0000).eax, 0x8000_0028)
        if maxExtended > 0x8000_0000 {
            for leaf in UInt32(0x8000_0001)...maxExtended { _ = read(leaf) }
        }
        return table
    }

    /// The number of logical processors this machine has online.
    public static var onlineProcessors: Int { ProcessInfo.processInfo.activeProcessorCount }
}
