import Foundation
import TernCPU
import TernHypervisor
import Testing
@testable import TernQEMU

@Suite struct QEMUGuestCPUTests {
    let map: CPUMap
    /// A QEMU that knows a handful of properties and offers some of them (as a probe would say).
    let capabilities: QEMUCapabilities

    init() throws {
        map = try CPUMap.builtin()
        capabilities = QEMUCapabilities(
            version: "7.2.0", accelerator: .tcg,
            properties: ["fpu": true, "sse2": true, "avx": true, "avx2": false, "pclmulqdq": true, "lahf-lm": true, "hypervisor": true,
                         "vme": false],
            unavailableFeatures: ["Haswell-noTSX": ["vme"], "qemu64": []], key: "test")
    }

    @Test func everyKnownFeatureIsStatedExplicitlyThenEnforce() throws {
        let features = try map.registry.set(of: ["fpu", "sse2", "avx", "pclmuldq", "lahf_lm"])
        let cpu = GuestCPU(model: "qemu64", vendor: "Intel", signature: CPUSignature(family: 6, model: 85, stepping: 7), features: features)
        let option = QEMUGuestCPU(cpu, map: map, capabilities: capabilities)
        let parts = option.argument.split(separator: ",").map(String.init)
        #expect(parts.first == "qemu64")
        #expect(parts.last == "enforce")
        for part in ["vendor=GenuineIntel", "family=6", "model=85", "stepping=7", "fpu=on", "sse2=on", "avx=on", "avx2=off",
                     "pclmulqdq=on", "lahf-lm=on", "hypervisor=on", "vme=off"] {
            #expect(parts.contains(part), "\(part)")
        }
        // Properties QEMU does not have are not passed (QEMU would refuse them).
        #expect(!parts.contains { $0.hasPrefix("osxsave") })
    }

    @Test func modelsQEMULacksStartFromMax() {
        let cpu = GuestCPU(model: "EPYC-Genoa", vendor: "AMD", signature: nil, features: FeatureSet())
        #expect(QEMUGuestCPU(cpu, map: map, capabilities: capabilities).argument.hasPrefix("max,vendor=AuthenticAMD"))
    }

    @Test func theCLFLUSHLineSizeIsReportedAsNotHonoured() {
        let cpu = GuestCPU(model: nil, vendor: "Intel", signature: nil, features: FeatureSet(), clflushLineSize: 8)
        #expect(QEMUGuestCPU(cpu, map: map, capabilities: capabilities).notHonoured.first?.contains("CLFLUSH") == true)
    }

    @Test func theOfferIsWhatTheExpansionTurnsOn() {
        let offer = map.registry.names(of: QEMUGuestCPU.offer(capabilities, map: map))
        #expect(Set(offer) == ["fpu", "sse2", "avx", "pclmuldq", "lahf_lm", "hypervisor"])
    }

    @Test func featureWordsReadBackAsFeatures() {
        // CPUID.1:ECX bit 28 (AVX) and bit 1 (PCLMULQDQ); CPUID.7.0:EBX bit 5 (AVX2).
        let words: [JSONValue] = [
            ["cpuid-register": "ECX", "cpuid-input-eax": 1, "features": .number(Double((1 << 28) | (1 << 1)))],
            ["cpuid-register": "EBX", "cpuid-input-eax": 7, "cpuid-input-ecx": 0, "features": 32],
        ]
        #expect(map.registry.names(of: QEMUGuestCPU.features(fromFeatureWords: words, map: map)) == ["pclmuldq", "avx", "avx2"])
    }

    @Test func commandLineForAVMOfTheDaemon() throws {
        let files = VMFiles(directory: URL(fileURLWithPath: "/run/tern/vms/web"))
        let configuration = VMConfiguration(
            name: "web", memoryMiB: 512, vcpus: 2, kernel: "/k", initrd: "/i", cmdline: "console=ttyS0", disk: nil,
            cpu: GuestCPU(model: nil, vendor: "Intel", signature: nil, features: FeatureSet()))
        let line = QEMUCommandLine(
            binary: "/usr/bin/qemu-system-x86_64", configuration: configuration,
            cpu: QEMUGuestCPU(configuration.cpu, map: map, capabilities: capabilities), accelerator: .tcg, files: files,
            console: .socket)
        let args = line.arguments.joined(separator: " ")
        for expected in ["-machine q35,smm=off,sata=off,smbus=off,vmport=off", "-global apic-common.vapic=off",
                         "-accel tcg", "-m 512M", "-smp 2", "-kernel /k", "-initrd /i", "-append console=ttyS0",
                         "-qmp unix:/run/tern/vms/web/control.sock,server=on,wait=off",
                         "logfile=/run/tern/vms/web/console.log"] {
            #expect(args.contains(expected), "\(expected)")
        }
        // ternd starts QEMU itself, in a session of its own (QEMUProcess), so QEMU never forks.
        #expect(!line.arguments.contains("-daemonize"))
        #expect(args.contains("-device virtio-balloon-pci,id=balloon0,free-page-reporting=on"))

        var withoutReporting = configuration
        withoutReporting.memoryBalloon = MemoryBalloon(freePageReporting: false)
        var noBalloon = configuration
        noBalloon.memoryBalloon = nil
        let lines = [withoutReporting, noBalloon].map {
            QEMUCommandLine(
                binary: "qemu", configuration: $0, cpu: QEMUGuestCPU($0.cpu, map: map, capabilities: capabilities), accelerator: .tcg,
                files: files, console: .socket
            ).arguments.joined(separator: " ")
        }
        #expect(lines[0].contains("virtio-balloon-pci,id=balloon0,free-page-reporting=off"))
        #expect(!lines[1].contains("virtio-balloon"))
    }
}

@Suite struct QEMUAcceleratorTests {
    @Test func softwareKVMIsNotKVM() {
        let (accelerator, reason) = QEMUAccelerator.detect(
            cpuinfo: "flags\t: fpu vme sse2\n", modules: "kvm_pvm 1234 0 - Live\n", kvmDevicePresent: true)
        #expect(accelerator == .tcg)
        #expect(reason.contains("kvm_pvm"))
    }

    @Test func noVirtualizationExtensionsMeansTCG() {
        #expect(QEMUAccelerator.detect(cpuinfo: "flags\t: fpu sse2\n", modules: "kvm 1 0\n", kvmDevicePresent: true).0 == .tcg)
    }

    @Test func noDeviceMeansTCG() {
        #expect(QEMUAccelerator.detect(cpuinfo: "flags\t: fpu vmx\n", modules: "", kvmDevicePresent: false).0 == .tcg)
    }

    @Test func realHardwareMeansKVM() {
        let (accelerator, _) = QEMUAccelerator.detect(
            cpuinfo: "flags\t: fpu vmx sse2\n", modules: "kvm_intel 1 0\nkvm 2 1 kvm_intel\n", kvmDevicePresent: true)
        #expect(accelerator == .kvm)
    }
}
