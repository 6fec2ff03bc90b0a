import Foundation
import TernCPU
import TernHypervisor

/// A VM as the user defines it: a subset of libvirt's domain XML.
///
/// ```xml
/// <domain type='qemu'>
///   <name>web1</name>
///   <memory unit='MiB'>512</memory>
///   <vcpu>2</vcpu>
///   <os>
///     <type arch='x86_64' machine='q35'>hvm</type>
///     <kernel>/var/lib/tern/vmlinuz</kernel>
///     <initrd>/var/lib/tern/initramfs.cpio.gz</initrd>
///     <cmdline>console=ttyS0</cmdline>
///   </os>
///   <cpu mode='custom' match='exact'>          <!-- libvirt's <cpu>, as is -->
///     <model>Haswell-noTSX</model>
///     <feature policy='disable' name='avx2'/>
///   </cpu>
///   <devices>
///     <disk type='file' device='disk'><source file='/var/lib/tern/disk.img'/></disk>
///     <memballoon model='virtio' freePageReporting='on'/>   <!-- the default; model='none': no balloon -->
///   </devices>
///   <metadata>                                   <!-- Tern's CPU modes beyond libvirt's -->
///     <tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='compatibility'/>
///     <!-- or mode='pool' with one <cpu>…</cpu> or <cpudata>…</cpudata> per pool host inside -->
///   </metadata>
/// </domain>
/// ```
///
/// Without `<cpu>` and without Tern metadata the guest gets the host's CPU (host passthrough).
public struct VMDefinition: Sendable, Equatable {
    public var name: String
    public var memoryMiB: Int
    public var vcpus: Int
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var disk: String?
    public var cpu: CPUChoice
    /// The memory balloon: without `<memballoon>`, a virtio balloon with free page reporting
    /// (libvirt adds a balloon by default too, but leaves reporting off); nil for `model='none'`.
    public var memoryBalloon: MemoryBalloon?
    /// The XML the definition was read from (kept verbatim for `dumpxml` and persistence).
    public var xml: String

    /// How the guest CPU is chosen.
    public enum CPUChoice: Sendable, Equatable {
        case hostPassthrough
        case definition(CPUDefinition)
        case compatibility
        /// Pool mode: the pool members as host descriptions (XML), resolved at start.
        case pool([String])
    }

    /// The same definition under another name (its XML changed to match).
    public func renamed(_ newName: String) throws -> VMDefinition {
        guard newName != name else { return self }
        try Self.checkName(newName)
        guard let range = xml.range(of: "<name>\(name)</name>") ?? xml.range(of: "<name>") else {
            throw VMDefinitionError.invalid("no <name> element")
        }
        var text = xml
        text.replaceSubrange(range, with: "<name>\(newName)</name>")
        return try VMDefinition(xml: text)
    }

    /// A VM's name names its directory under the daemon's state directory too: letters, digits,
    /// '-', '_' and '.', not starting with '.' (so never '.', '..' or a hidden file).
    static func checkName(_ name: String) throws {
        guard !name.isEmpty else { throw VMDefinitionError.invalid("<name> is missing") }
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }), name.count <= 64 else {
            throw VMDefinitionError.invalid("name '\(name)' may use only letters, digits, '-', '_' and '.' (64 at most)")
        }
        guard !name.hasPrefix(".") else { throw VMDefinitionError.invalid("name '\(name)' may not begin with '.'") }
    }

    /// Reads a domain definition.
    ///
    /// - Throws: ``VMDefinitionError`` naming the element at fault, or the XML error with line
    ///   and column.
    public init(xml: String, source: String = "<definition>") throws {
        let root: XMLNode
        do {
            root = try XMLNode.parse(xml, source: source)
        } catch {
            throw VMDefinitionError.malformed("\(error)")
        }
        guard root.name == "domain" else { throw VMDefinitionError.invalid("expected <domain>, found <\(root.name)>") }
        guard let name = root.childText("name"), !name.isEmpty else { throw VMDefinitionError.invalid("<name> is missing") }
        try Self.checkName(name)
        self.name = name
        self.xml = xml
        guard let memoryNode = root.child(named: "memory") else { throw VMDefinitionError.invalid("<memory> is missing") }
        memoryMiB = try Self.memory(memoryNode)
        if let vcpuText = root.childText("vcpu") {
            guard let count = Int(vcpuText) else { throw VMDefinitionError.invalid("<vcpu> '\(vcpuText)' is not a number") }
            vcpus = count
        } else {
            vcpus = 1
        }
        let os = root.child(named: "os")
        if let type = os?.child(named: "type") {
            if let arch = type.attributes["arch"], arch != "x86_64" {
                throw VMDefinitionError.invalid("arch '\(arch)' is not supported (x86_64 only)")
            }
        }
        kernel = os?.childText("kernel")
        initrd = os?.childText("initrd")
        cmdline = os?.childText("cmdline")
        let devices = root.child(named: "devices")
        disk = devices?.children(named: "disk").first?.child(named: "source")?.attributes["file"]
        memoryBalloon = try Self.memoryBalloon(devices?.child(named: "memballoon"))
        if kernel == nil && disk == nil { throw VMDefinitionError.invalid("nothing to boot: give <os><kernel> or a <disk>") }

        let ternCPU = root.child(named: "metadata")?.children.first { $0.name.hasSuffix(":cpu") || $0.name == "cpu" }
        if let ternCPU, let mode = ternCPU.attributes["mode"] {
            switch mode {
            case "compatibility": cpu = .compatibility
            case "pool":
                let members = ternCPU.children.map { Self.serialize($0) }
                if members.isEmpty { throw VMDefinitionError.invalid("pool mode needs at least one host <cpu> or <cpudata>") }
                cpu = .pool(members)
            default: throw VMDefinitionError.invalid("unknown Tern CPU mode '\(mode)' (expected compatibility or pool)")
            }
            if root.child(named: "cpu") != nil {
                throw VMDefinitionError.invalid("give either <cpu> or Tern's CPU mode in <metadata>, not both")
            }
        } else if let cpuNode = root.child(named: "cpu") {
            do {
                let definition = try CPUDefinition(element: cpuNode, source: source)
                cpu = definition.mode == .hostPassthrough && definition.features.isEmpty ? .hostPassthrough : .definition(definition)
            } catch {
                throw VMDefinitionError.invalid("\(error)")
            }
        } else {
            cpu = .hostPassthrough
        }
    }

    /// Reads `<memballoon model='virtio|none' freePageReporting='on|off'/>`.
    static func memoryBalloon(_ node: XMLNode?) throws -> MemoryBalloon? {
        guard let node else { return MemoryBalloon() }
        switch node.attributes["model"] {
        case "none":
            return nil
        case "virtio":
            switch node.attributes["freePageReporting"] {
            case nil, "on": return MemoryBalloon(freePageReporting: true)
            case "off": return MemoryBalloon(freePageReporting: false)
            case let value?:
                throw VMDefinitionError.invalid("<memballoon freePageReporting='\(value)'> must be 'on' or 'off' (line \(node.line))")
            }
        case let model?:
            throw VMDefinitionError.invalid("<memballoon model='\(model)'> is not supported (virtio or none) (line \(node.line))")
        case nil:
            throw VMDefinitionError.invalid("<memballoon> needs a model (virtio or none) (line \(node.line))")
        }
    }

    /// The guest CPU configuration, with pool members read with `map`.
    public func cpuConfig(map: CPUMap) throws -> GuestCPUConfig {
        switch cpu {
        case .hostPassthrough: return .hostPassthrough
        case .compatibility: return .compatibility
        case .definition(let definition): return .definition(definition)
        case .pool(let members):
            var cpus: [ResolvedCPU] = []
            for member in members { cpus += try map.hostPool(xml: member, source: "pool member of \(name)") }
            return .pool(cpus)
        }
    }

    private static func memory(_ node: XMLNode) throws -> Int {
        let text = node.text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let value = Int(text), value > 0 else { throw VMDefinitionError.invalid("<memory> '\(text)' is not a positive number") }
        switch (node.attributes["unit"] ?? "KiB").lowercased() {
        case "b", "bytes": return value / (1024 * 1024)
        case "k", "kib": return value / 1024
        case "m", "mib": return value
        case "g", "gib": return value * 1024
        case let unit: throw VMDefinitionError.invalid("<memory unit='\(unit)'> is not a known unit (KiB, MiB, GiB)")
        }
    }

    /// Writes an element back as XML (for pool members kept as text).
    static func serialize(_ node: XMLNode) -> String {
        var out = "<\(node.name)"
        for (key, value) in node.attributes.sorted(by: { $0.key < $1.key }) { out += " \(key)='\(xmlEscape(value))'" }
        let text = node.text.trimmingCharacters(in: .whitespacesAndNewlines)
        if node.children.isEmpty && text.isEmpty { return out + "/>" }
        out += ">" + xmlEscape(text)
        for child in node.children { out += serialize(child) }
        return out + "</\(node.name)>"
    }
}

/// Errors in a VM definition.
public enum VMDefinitionError: Error, Sendable, CustomStringConvertible {
    /// The XML is not well-formed (the message has line and column).
    case malformed(String)
    /// The XML is well-formed but not a valid definition.
    case invalid(String)

    public var description: String {
        switch self {
        case .malformed(let message): message
        case .invalid(let message): "invalid domain definition: \(message)"
        }
    }
}
