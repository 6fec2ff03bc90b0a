import Foundation
import TernCPU
import TernHost

/// libvirt's domain capabilities XML: what a VM may use on this host.
struct DomainCapabilities {
    var caps: HostCapabilities
    var qemuVersion: String

    init(_ caps: HostCapabilities, qemuVersion: String) {
        self.caps = caps
        self.qemuVersion = qemuVersion
    }

    func xml() throws -> String {
        let map = caps.map
        // What a guest may get here: QEMU's offer under this accelerator, limited to the host CPU.
        let host = caps.guestOffer ?? caps.host.cpu
        var out = "<domainCapabilities>\n"
        if let emulator = HostCapabilities.emulatorPath { out += "  <path>\(emulator)</path>\n" }
        out += "  <domain>\(caps.accelerator.domainType)</domain>\n  <machine>q35</machine>\n  <arch>x86_64</arch>\n"
        out += "  <!-- QEMU \(qemuVersion); accelerator: \(caps.acceleratorReason) -->\n"
        out += "  <!-- host CPU: \(caps.host.source); a guest may get the \(host.features.count) features QEMU offers that it has -->\n"
        out += "  <vcpu max='\(max(caps.topology.vcpus, 255))'/>\n  <cpu>\n"
        out += "    <mode name='host-passthrough' supported='yes'>\n"
        out += "      <enum name='hostPassthroughMigratable'>\n        <value>on</value>\n        <value>off</value>\n      </enum>\n    </mode>\n"
        out += "    <mode name='maximum' supported='yes'/>\n"
        var hostModel = try map.describe(host, kind: .guest, migratable: true)
        hostModel.fallback = .forbid
        out += "    <mode name='host-model' supported='yes'>\n"
        out += "      <model fallback='forbid'>\(hostModel.model ?? "")</model>\n"
        if let vendor = host.vendor { out += "      <vendor>\(vendor)</vendor>\n" }
        for feature in hostModel.features {
            out += "      <feature policy='\(feature.policy?.rawValue ?? "require")' name='\(feature.name)'/>\n"
        }
        out += "    </mode>\n    <mode name='custom' supported='yes'>\n"
        var blockers = ""
        for model in map.models {
            let vendorOK = model.vendor == nil || host.vendor == nil || model.vendor == host.vendor
            let missing = model.features.subtracting(host.features)
            let usable = vendorOK && missing.isEmpty
            out += "      <model usable='\(usable ? "yes" : "no")' vendor='\(model.vendor ?? "unknown")'>\(model.name)</model>\n"
            if !missing.isEmpty {
                blockers += "      <blockers model='\(model.name)'>\n"
                for name in map.registry.names(of: missing) { blockers += "        <feature name='\(name)'/>\n" }
                blockers += "      </blockers>\n"
            }
        }
        out += blockers + "    </mode>\n"
        // Tern's own modes (not in libvirt): classic compatibility mode and pool mode.
        if let vendor = host.vendor, let mask = CompatibilityMask.forVendor(vendor) {
            let withheld = try mask.withheld(in: map.registry).intersection(host.features)
            out += "    <!-- QEMU always reports a 64-byte CLFLUSH line: the 8-byte size of compatibility mode is not honoured -->\n"
            out += "    <mode name='compatibility' supported='yes' clflushLineSize='\(CompatibilityMask.clflushLineSize)' clflushHonoured='no'>\n"
            for name in map.registry.names(of: withheld) { out += "      <feature policy='disable' name='\(name)'/>\n" }
            out += "    </mode>\n"
        } else {
            out += "    <mode name='compatibility' supported='no'/>\n"
        }
        out += "    <mode name='pool' supported='yes'/>\n  </cpu>\n"
        let vfio = FileManager.default.fileExists(atPath: "/dev/vfio/vfio")
        let groups = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/kernel/iommu_groups")) ?? []
        out += "  <devices>\n    <hostdev supported='\(vfio && !groups.isEmpty ? "yes" : "no")'>\n"
        out += "      <enum name='mode'>\n        <value>subsystem</value>\n      </enum>\n"
        out += "      <enum name='subsysType'>\n        <value>pci</value>\n      </enum>\n"
        out += "      <enum name='pciBackend'>\n" + (vfio ? "        <value>vfio</value>\n" : "") + "      </enum>\n"
        out += "    </hostdev>\n  </devices>\n</domainCapabilities>\n"
        return out
    }
}
