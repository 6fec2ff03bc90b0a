import Foundation

/// One CPUID input: the function (EAX) and sub-function (ECX) the instruction is executed with.
///
/// Corresponds to libvirt's `<cpuid eax_in='…' ecx_in='…'/>` and to the Intel SDM's "leaf" and
/// "sub-leaf".
public struct CPUIDLeaf: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The value in EAX when CPUID executes.
    public var function: UInt32
    /// The value in ECX when CPUID executes (0 for leaves that have no sub-leaves).
    public var subleaf: UInt32

    public init(_ function: UInt32, subleaf: UInt32 = 0) {
        self.function = function
        self.subleaf = subleaf
    }

    public static func < (lhs: CPUIDLeaf, rhs: CPUIDLeaf) -> Bool {
        (lhs.function, lhs.subleaf) < (rhs.function, rhs.subleaf)
    }

    public var description: String {
        subleaf == 0 ? hex32(function) : "\(hex32(function)).\(subleaf)"
    }
}

/// One of the four output registers of the CPUID instruction.
public enum CPUIDRegister: String, CaseIterable, Sendable, Codable {
    case eax, ebx, ecx, edx
}

/// The four registers CPUID returns for one leaf.
public struct CPUIDRegisters: Hashable, Sendable {
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }

    public subscript(register: CPUIDRegister) -> UInt32 {
        get {
            switch register {
            case .eax: eax
            case .ebx: ebx
            case .ecx: ecx
            case .edx: edx
            }
        }
        set {
            switch register {
            case .eax: eax = newValue
            case .ebx: ebx = newValue
            case .ecx: ecx = newValue
            case .edx: edx = newValue
            }
        }
    }
}

/// The processor's CPUID answers (and feature MSRs) as data: what a real CPU returned, what a
/// recorded dump holds, or what a guest will be shown.
///
/// Corresponds to libvirt's `<cpudata arch='x86'>` document (`<cpuid …/>` and `<msr …/>` rows).
public struct CPUIDTable: Equatable, Sendable {
    /// CPUID outputs, by leaf.
    public var leaves: [CPUIDLeaf: CPUIDRegisters]
    /// Feature MSRs (e.g. IA32_ARCH_CAPABILITIES, 0x10a), by index.
    public var msrs: [UInt32: UInt64]

    public init(leaves: [CPUIDLeaf: CPUIDRegisters] = [:], msrs: [UInt32: UInt64] = [:]) {
        self.leaves = leaves
        self.msrs = msrs
    }

    public subscript(leaf: CPUIDLeaf) -> CPUIDRegisters {
        get { leaves[leaf] ?? CPUIDRegisters() }
        set { leaves[leaf] = newValue }
    }

    /// The 12-character vendor string of leaf 0 (EBX, EDX, ECX), e.g. `GenuineIntel`.
    public var vendorString: String? {
        guard let regs = leaves[CPUIDLeaf(0)] else { return nil }
        var bytes: [UInt8] = []
        for word in [regs.ebx, regs.edx, regs.ecx] {
            for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8((word >> UInt32(shift)) & 0xff)) }
        }
        let string = String(decoding: bytes, as: UTF8.self)
        return string.allSatisfy({ $0 == "\0" }) ? nil : string
    }

    /// Writes a 12-character vendor string into leaf 0, keeping its EAX (highest basic leaf).
    public mutating func setVendorString(_ vendor: String) {
        var bytes = Array(vendor.utf8.prefix(12))
        while bytes.count < 12 { bytes.append(0x20) }
        func word(_ i: Int) -> UInt32 {
            (0..<4).reduce(0) { $0 | UInt32(bytes[i + $1]) << UInt32(8 * $1) }
        }
        var regs = self[CPUIDLeaf(0)]
        regs.ebx = word(0)
        regs.edx = word(4)
        regs.ecx = word(8)
        self[CPUIDLeaf(0)] = regs
    }

    /// The family, model and stepping decoded from leaf 1 EAX, as the Intel SDM and AMD APM define
    /// them (extended family added when the base family is 0xF; extended model used for families 6
    /// and 0xF).
    public var signature: CPUSignature? {
        guard let eax = leaves[CPUIDLeaf(1)]?.eax, eax != 0 else { return nil }
        return CPUSignature(leaf1EAX: eax)
    }

    /// The CLFLUSH line size in bytes (CPUID.01H:EBX[15:8] × 8).
    public var clflushLineSize: Int {
        Int((self[CPUIDLeaf(1)].ebx >> 8) & 0xff) * 8
    }

    /// Sets the CLFLUSH line size the CPU reports, in bytes (a multiple of 8).
    public mutating func setCLFLUSHLineSize(_ bytes: Int) {
        var regs = self[CPUIDLeaf(1)]
        regs.ebx = (regs.ebx & ~0xff00) | (UInt32(bytes / 8 & 0xff) << 8)
        self[CPUIDLeaf(1)] = regs
    }
}

/// A processor's family, model and stepping, as decoded from CPUID leaf 1.
///
/// Corresponds to libvirt's `<signature family='…' model='…' stepping='…'/>`.
public struct CPUSignature: Hashable, Sendable, Codable, CustomStringConvertible {
    public var family: Int
    public var model: Int
    public var stepping: Int

    public init(family: Int, model: Int, stepping: Int = 0) {
        self.family = family
        self.model = model
        self.stepping = stepping
    }

    /// Decodes leaf 1 EAX.
    public init(leaf1EAX eax: UInt32) {
        let baseFamily = Int((eax >> 8) & 0xf)
        let baseModel = Int((eax >> 4) & 0xf)
        let extFamily = Int((eax >> 20) & 0xff)
        let extModel = Int((eax >> 16) & 0xf)
        family = baseFamily == 0xf ? baseFamily + extFamily : baseFamily
        model = (baseFamily == 6 || baseFamily == 0xf) ? (extModel << 4) | baseModel : baseModel
        stepping = Int(eax & 0xf)
    }

    /// Encodes this signature as leaf 1 EAX (processor type 0).
    public var leaf1EAX: UInt32 {
        var eax = UInt32(stepping & 0xf)
        eax |= UInt32(model & 0xf) << 4
        eax |= UInt32((model >> 4) & 0xf) << 16
        if family >= 0xf {
            eax |= 0xf << 8
            eax |= UInt32((family - 0xf) & 0xff) << 20
        } else {
            eax |= UInt32(family & 0xf) << 8
        }
        return eax
    }

    public var description: String { "family \(family) model \(model) stepping \(stepping)" }
}

func hex32(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

func parseHex(_ text: String) -> UInt64? {
    var s = Substring(text.trimmingCharacters(in: .whitespaces))
    if s.hasPrefix("0x") || s.hasPrefix("0X") { s = s.dropFirst(2) } else { return UInt64(s) }
    return UInt64(s, radix: 16)
}
