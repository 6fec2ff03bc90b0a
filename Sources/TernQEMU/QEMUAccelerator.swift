import Foundation
import TernHypervisor

/// Chooses the accelerator QEMU can really use on this host.
public enum QEMUAccelerator {
    /// Hardware KVM only when the processor has VT-x or AMD-V (`vmx`/`svm` in `/proc/cpuinfo`)
    /// and `/dev/kvm` is a hardware KVM module. A software KVM such as `kvm_pvm` cannot run an
    /// unmodified kernel and does not hide CPUID bits, so it is treated as no KVM at all.
    public static func detect(
        cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        modules: String? = try? String(contentsOfFile: "/proc/modules", encoding: .utf8),
        kvmDevicePresent: Bool = FileManager.default.fileExists(atPath: "/dev/kvm")
    ) -> (Accelerator, reason: String) {
        let flagsLine = (cpuinfo ?? "").split(separator: "\n").first { $0.hasPrefix("flags") } ?? ""
        let flags = Set(flagsLine.split(separator: " ").map(String.init))
        let hasVT = flags.contains("vmx") || flags.contains("svm")
        guard kvmDevicePresent else {
            return (.tcg, "no /dev/kvm: guests run on QEMU's TCG emulator")
        }
        if (modules ?? "").contains("kvm_pvm") {
            return (.tcg, "/dev/kvm is the software kvm_pvm module, which cannot run stock kernels: guests run on QEMU's TCG emulator")
        }
        guard hasVT else {
            return (.tcg, "the CPU has no VT-x/AMD-V (no vmx/svm in /proc/cpuinfo): guests run on QEMU's TCG emulator")
        }
        return (.kvm, "VT-x/AMD-V present and /dev/kvm available: guests run on KVM")
    }
}
