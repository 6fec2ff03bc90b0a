/// A host CPU read from a file: a raw `<cpudata>` dump, a `<cpu>` description, or a whole
/// capabilities document (its `<host><cpu>`).
public struct HostDescription: Sendable {
    /// The CPU as features.
    public var cpu: ResolvedCPU
    /// The raw CPUID table when the file had one (a `<cpudata>` dump); otherwise a table
    /// synthesized from the features.
    public var table: CPUIDTable
    /// The `<cpu>` description when the file had one.
    public var definition: CPUDefinition?
    /// Where it came from.
    public var source: String

    public init(cpu: ResolvedCPU, table: CPUIDTable, definition: CPUDefinition?, source: String) {
        self.cpu = cpu
        self.table = table
        self.definition = definition
        self.source = source
    }
}

extension CPUMap {
    /// Reads one host CPU from XML text.
    ///
    /// - Throws: XML errors with line and column; lookup errors for unknown models and features.
    public func hostDescription(xml: String, source: String) throws(CPUError) -> HostDescription {
        let root = try XMLNode.parse(xml, source: source)
        if root.name == "cpudata" {
            let table = try CPUIDTable(cpudata: root, source: source)
            return HostDescription(cpu: resolve(table: table), table: table, definition: nil, source: source)
        }
        guard let element = CPUDefinition.cpuElements(in: root).first else {
            throw .invalidXML(source: source, message: "expected <cpudata> or a document with a <cpu> element")
        }
        let definition = try CPUDefinition(element: element, source: source)
        let cpu = try resolve(definition)
        return HostDescription(cpu: cpu, table: synthesizedTable(for: cpu), definition: definition, source: source)
    }

    /// A CPUID table that has exactly `cpu`'s features, vendor and signature.
    public func synthesizedTable(for cpu: ResolvedCPU) -> CPUIDTable {
        var table = CPUIDTable()
        table[CPUIDLeaf(0)] = CPUIDRegisters(eax: 0xd)
        table[CPUIDLeaf(1)] = CPUIDRegisters(eax: 0, ebx: 0x0000_0800)
        table[CPUIDLeaf(0x8000_0000)] = CPUIDRegisters(eax: 0x8000_0008)
        let guest = GuestCPU(model: nil, vendor: cpu.vendor, signature: cpu.signature, features: cpu.features)
        return cpuidTable(for: guest, host: table)
    }

    /// Reads a pool of host CPUs from XML text: one `<cpudata>` dump, or any number of `<cpu>`
    /// descriptions (as `virsh cpu-baseline` accepts).
    public func hostPool(xml: String, source: String) throws(CPUError) -> [ResolvedCPU] {
        let trimmed = xml.drop { $0.isWhitespace }
        if trimmed.hasPrefix("<cpudata") || (xml.contains("<cpudata") && !xml.contains("<cpu ") && !xml.contains("<cpu>")) {
            return [try hostDescription(xml: xml, source: source).cpu]
        }
        var result: [ResolvedCPU] = []
        for definition in try CPUDefinition.all(xml: xml, source: source) { result.append(try resolve(definition)) }
        return result
    }
}
